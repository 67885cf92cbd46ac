"""ng requests from hostile clients: every input gives a reply or a drop, never an exception,
and the counters keep a bounded set of names (issue 10)."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.control.ng import KNOWN_COMMANDS, NgDropped, NgImmediateReply, NgProtocol, NgRequest

# JSON text with escapes json.loads accepts but UTF-8 cannot hold (lone surrogates).
ESCAPES = st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\u0000", "\\u00e9", "x"])


@given(st.lists(ESCAPES, max_size=4), st.sampled_from(["key", "value", "command"]))
@example(["\\ud800"], "command")
@example(["\\ud800"], "key")
def test_json_with_lone_surrogates_gets_an_error_reply(escapes: list[str], where: str) -> None:
    text = "".join(escapes)
    body = {
        "key": '{"command": "ping", "' + text + '": "1"}',
        "value": '{"command": "ping", "flags": ["' + text + '"]}',
        "command": '{"command": "' + text + '"}',
    }[where]
    outcome = NgProtocol().receive(b"c1 " + body.encode(), 0.0)
    if isinstance(outcome, NgImmediateReply):
        reply = json.loads(outcome.data.partition(b" ")[2])
        assert reply["result"] == "error" and len(reply["error-reason"]) <= 300
    else:
        assert isinstance(outcome, NgRequest)


@given(st.binary(max_size=200))
@example(b'{"command": "\\ud800"}')
def test_any_payload_is_answered_or_dropped(payload: bytes) -> None:
    protocol = NgProtocol()
    outcome = protocol.receive(b"c1 " + payload, 0.0)
    assert isinstance(outcome, NgRequest | NgImmediateReply | NgDropped)
    names = {name for name in protocol.counters.events if name.startswith("command.")}
    assert names <= {f"command.{known}" for known in KNOWN_COMMANDS} | {"command.unknown"}
