"""Property: the relay's SDP rewrite changes only c=, m=, o=, a=rtcp and ICE lines, whatever the
document looks like (random line endings, trailing blanks, unknown lines, FQDNs, candidates)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from tests.unit.sdp.strategies import Document, Section, documents

from icerelay.relay.policy import IceMode, IcePriority
from icerelay.relay.rewrite import StreamPlan, rewrite
from icerelay.sdp import ICE_ATTRIBUTES, IceCredentials, SdpError, SessionDescription

RELAY_ADDRESSES = st.sampled_from(["203.0.113.1", "2001:db8::1"])
CREDENTIALS = IceCredentials("relayufr", "relaypassword0123456789x")


def touchable(line: str) -> bool:
    """Lines the rewrite may change, add or remove."""
    text = line.rstrip("\r\n")
    if text[:2] in ("c=", "m=", "o="):
        return True
    if text.startswith("a="):
        name = text[2:].split(":", 1)[0].strip(" \t")
        return name in ICE_ATTRIBUTES or name == "rtcp"
    return False


def untouched(text: str) -> list[str]:
    """The lines the rewrite must leave alone, with their endings.

    The document's final line ending is a property of the document, not of a line: when the
    rewrite appends after, or removes, the last line, the new last line gains or loses it. So the
    last line is compared without its ending; every other line byte for byte.
    """
    # Lines end at LF only, as SDP's do (RFC 8866 §5); str.splitlines() would also split at
    # \x1c-\x1e, \x85 or U+2028 inside a value.
    lines = [line for line in re.findall(r"[^\n]*\n|[^\n]+$", text) if not touchable(line)]
    if lines:
        lines[-1] = lines[-1].rstrip("\r\n")
    return lines


#: Per media section: does it get a plan, and the (halved) relay port; missing entries: no plan.
PLAN_CHOICES = st.lists(st.tuples(st.booleans(), st.integers(512, 16000)), max_size=3)


def text_only(text: str) -> Document:
    """A document for an explicit example (the test reads only its text)."""
    return Document(text, None, Section(), [])


@given(
    documents(),
    RELAY_ADDRESSES,
    st.sampled_from(list(IceMode)),
    st.sampled_from(list(IcePriority)),
    st.booleans(),
    st.booleans(),
    PLAN_CHOICES,
)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
# An empty line became the last line when the candidates after it were removed, in a body
# without a final line ending: rendering dropped its ending, so the line vanished.
@example(
    text_only(
        "v=0\r\no=0 0 0 IN IP4 0.0.0.0\r\ns=\r\na=0\r\na=0\r\n\r\nm=audio 1 RTP/AVP\r\n"
        "a=0\r\na=0\r\na=0\r\n\r\na=candidate:0 1 UDP 0 0.0.0.0 0 typ host\r\n"
        "a=candidate:0 1 UDP 0 0.0.0.0 0 typ host"
    ),
    "203.0.113.1",
    IceMode.REMOVE,
    IcePriority.NONE,
    False,
    False,
    [(True, 512)],
)
# A value holding \x1e (which str.splitlines() takes for a line break) before removed lines.
@example(
    text_only(
        "v=0\r\ns=\r\na=0\r\na=ice-ufrag:0\r\nm=audio 1 RTP/AVP\r\nc=IN IP4 0.0.0.0\r\n"
        "a=0:\x1e\r\na=candidate:0 1 UDP 0 0.0.0.0 0 typ host"
    ),
    "203.0.113.1",
    IceMode.REMOVE,
    IcePriority.NONE,
    False,
    False,
    [(True, 512)],
)
def test_rewrite_touches_only_what_it_must(
    document: Document,
    relay: str,
    ice: IceMode,
    priority: IcePriority,
    replace_origin: bool,
    replace_session: bool,
    choices: list[tuple[bool, int]],
) -> None:
    try:
        sdp = SessionDescription.parse(document.text)
    except SdpError:
        event("document refused by the parser")
        return  # the generator also makes documents the parser refuses; not our subject here
    plans: list[StreamPlan | None] = []
    for index, media in enumerate(sdp.media):
        planned, half_port = choices[index] if index < len(choices) else (False, 0)
        if media.port == 0 or not planned:
            plans.append(None)
        else:
            port = 2 * half_port
            plans.append(StreamPlan(relay, port, port + 1, CREDENTIALS))
    out = rewrite(
        sdp,
        plans,
        ice=ice,
        priority=priority,
        replace_origin=replace_origin,
        replace_session_connection=replace_session,
    )
    text = out.to_text()
    # Everything the relay has no business with is byte-exact and in its order.
    assert untouched(text) == untouched(document.text), (document.text, text)
    # The input object is untouched too, and the output is a valid SDP.
    assert sdp.to_text() == document.text
    again = SessionDescription.parse(text)
    for media, plan in zip(again.media, plans, strict=True):
        if plan is None:
            continue
        if ice is IceMode.FORCE_RELAY:
            assert (
                media.port
                == SessionDescription.parse(document.text).media[media_index(again, media)].port
            )
        else:
            assert media.port == plan.rtp_port
            connection = media.effective_connection(again)
            assert connection is not None
            assert connection.address in (relay, "0.0.0.0", "::")
        if ice is IceMode.REMOVE:
            assert not media.candidates() and media.ice_credentials(again) is None


def media_index(sdp: SessionDescription, media: object) -> int:
    return next(index for index, item in enumerate(sdp.media) if item is media)
