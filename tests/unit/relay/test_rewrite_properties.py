"""Property: the relay's SDP rewrite changes only c=, m=, o=, a=rtcp and ICE lines, whatever the
document looks like (random line endings, trailing blanks, unknown lines, FQDNs, candidates)."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.unit.sdp.strategies import Document, documents

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
    lines = [line for line in text.splitlines(keepends=True) if not touchable(line)]
    if lines:
        lines[-1] = lines[-1].rstrip("\r\n")
    return lines


@given(
    documents(),
    RELAY_ADDRESSES,
    st.sampled_from(list(IceMode)),
    st.sampled_from(list(IcePriority)),
    st.booleans(),
    st.booleans(),
    st.data(),
)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_rewrite_touches_only_what_it_must(
    document: Document,
    relay: str,
    ice: IceMode,
    priority: IcePriority,
    replace_origin: bool,
    replace_session: bool,
    data: st.DataObject,
) -> None:
    try:
        sdp = SessionDescription.parse(document.text)
    except SdpError:
        event("document refused by the parser")
        return  # the generator also makes documents the parser refuses; not our subject here
    plans: list[StreamPlan | None] = []
    for index, media in enumerate(sdp.media):
        if media.port == 0 or not data.draw(st.booleans(), label=f"plan {index}"):
            plans.append(None)
        else:
            port = 2 * data.draw(st.integers(1024, 32000), label=f"port {index}")
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
