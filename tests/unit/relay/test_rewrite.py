"""SDP rewriting and the ICE candidate policy, on real-world-shaped bodies."""

from __future__ import annotations

import pytest

from icerelay.errors import RelayError
from icerelay.relay.policy import IceMode, IcePriority, candidate_priority
from icerelay.relay.rewrite import (
    StreamPlan,
    describe,
    relay_candidates,
    relay_foundation,
    rewrite,
)
from icerelay.sdp import Candidate, Direction, IceCredentials, SessionDescription

from .samples import ASTERISK, AUDIO_VIDEO, HOLD_SENDONLY, HOLD_ZERO, IPV6, LINPHONE, PLAIN

RELAY = "203.0.113.1"
PLAN = StreamPlan(RELAY, 30000, 30001)


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def changed(before: bytes, after: bytes) -> tuple[list[str], list[str]]:
    """Lines only in ``before`` and lines only in ``after`` (order-preserving)."""
    old, new = lines(before), lines(after)
    return [line for line in old if line not in new], [line for line in new if line not in old]


def test_priority_formula() -> None:
    # 2^24 * type preference + 2^8 * 65535 + (256 - component)
    assert candidate_priority(0, 1) == 16776960 + 255
    assert candidate_priority(0, 2) == 16776960 + 254
    assert candidate_priority(126, 1) == 126 * 2**24 + 65535 * 256 + 255 == 2130706431
    assert candidate_priority(126, 2) == 2130706430
    with pytest.raises(ValueError):
        candidate_priority(130, 1)  # MediaProxy's value is outside the RFC's 0..126
    assert IcePriority.HIGH.type_preference == 126
    assert IcePriority.LOW.type_preference == 0


def test_relay_candidate_lines() -> None:
    low = relay_candidates(PLAN, IcePriority.LOW, component_2=True)
    foundation = relay_foundation(RELAY)
    assert [f"a=candidate:{c.to_sdp()}" for c in low] == [
        f"a=candidate:{foundation} 1 UDP 16777215 {RELAY} 30000 typ relay raddr {RELAY} "
        "rport 30000",
        f"a=candidate:{foundation} 2 UDP 16777214 {RELAY} 30001 typ relay raddr {RELAY} "
        "rport 30001",
    ]
    high = relay_candidates(PLAN, IcePriority.HIGH, component_2=False)
    assert [c.priority for c in high] == [2130706431]
    assert relay_candidates(PLAN, IcePriority.NONE, component_2=True) == []
    assert relay_foundation(RELAY) != relay_foundation("203.0.113.2")


def test_describe_asterisk() -> None:
    (info,) = describe(SessionDescription.parse(ASTERISK))
    assert (info.media, info.address, info.port) == ("audio", "10.0.1.40", 17234)
    assert (info.rtcp_address, info.rtcp_port) == ("10.0.1.40", 17235)
    assert info.ice and info.component_2 and not info.rtcp_mux and not info.hold
    assert info.codec == "PCMU"


def test_describe_linphone_and_plain_and_ipv6() -> None:
    audio, video = describe(SessionDescription.parse(LINPHONE))
    assert audio.ice and audio.rtcp_port == 7079 and audio.codec == "opus"
    assert video.rejected and not video.ice
    (plain,) = describe(SessionDescription.parse(PLAIN))
    assert (plain.address, plain.rtcp_address, plain.rtcp_port) == (
        "192.0.2.11",
        "192.0.2.11",
        6001,
    )
    assert not plain.ice
    (ipv6,) = describe(SessionDescription.parse(IPV6))
    assert ipv6.rtcp_mux and (ipv6.rtcp_address, ipv6.rtcp_port) == ("2001:db8::10", 49170)


def test_describe_hold() -> None:
    (sendonly,) = describe(SessionDescription.parse(HOLD_SENDONLY))
    assert sendonly.hold and sendonly.direction is Direction.SENDONLY
    (zero,) = describe(SessionDescription.parse(HOLD_ZERO))
    assert zero.hold and zero.direction is Direction.SENDRECV


def test_default_ice_inserts_relay_candidates_and_touches_nothing_else() -> None:
    sdp = SessionDescription.parse(ASTERISK)
    out = rewrite(sdp, [PLAN], priority=IcePriority.HIGH).to_bytes()
    removed, added = changed(ASTERISK, out)
    assert removed == ["c=IN IP4 10.0.1.40", "m=audio 17234 RTP/AVP 0 3 8 101"]
    foundation = relay_foundation(RELAY)
    assert added == [
        f"c=IN IP4 {RELAY}",
        "m=audio 30000 RTP/AVP 0 3 8 101",
        f"a=candidate:{foundation} 1 UDP 2130706431 {RELAY} 30000 typ relay raddr {RELAY} "
        "rport 30000",
        f"a=candidate:{foundation} 2 UDP 2130706430 {RELAY} 30001 typ relay raddr {RELAY} "
        "rport 30001",
    ]
    # The relay's candidates follow the peer's; a=sendrecv is still the last line.
    assert lines(out)[-1] == "a=sendrecv"
    assert (
        lines(out).index(added[2])
        == lines(out).index("a=candidate:S8e86c939 2 UDP 1694498814 142.134.201.57 17235 typ srflx")
        + 1
    )
    # The input object is not modified.
    assert sdp.to_bytes() == ASTERISK


def test_linphone_keeps_line_endings_and_blanks_and_rewrites_rtcp() -> None:
    sdp = SessionDescription.parse(LINPHONE)
    out = rewrite(sdp, [PLAN, None], priority=IcePriority.LOW).to_bytes()
    assert b"\r\n" not in out
    assert b"a=fmtp:96 useinbandfec=1  \n" in out
    assert b"a=rtcp-fb:* trr-int 1000\t\n" in out
    removed, added = changed(LINPHONE, out)
    assert removed == ["c=IN IP4 192.168.1.20", "m=audio 7078 RTP/AVP 96 0 8 101", "a=rtcp:7079"]
    assert added[:3] == [f"c=IN IP4 {RELAY}", "m=audio 30000 RTP/AVP 96 0 8 101", "a=rtcp:30001"]
    assert len(added) == 5 and all("typ relay" in line for line in added[3:])
    assert "m=video 0 RTP/AVP 96" in lines(out)


def test_plain_sdp_gets_no_candidates() -> None:
    out = rewrite(SessionDescription.parse(PLAIN), [PLAN]).to_bytes()
    removed, added = changed(PLAIN, out)
    # The session-level c= is not used by the only stream: it stays unless asked.
    assert removed == [
        "m=audio 6000 RTP/AVP 8 101",
        "c=IN IP4 192.0.2.11",
        "a=rtcp:6001 IN IP4 192.0.2.11",
    ]
    assert added == [
        "m=audio 30000 RTP/AVP 8 101",
        f"c=IN IP4 {RELAY}",
        f"a=rtcp:30001 IN IP4 {RELAY}",
    ]


def test_replace_origin_and_session_connection() -> None:
    out = rewrite(
        SessionDescription.parse(PLAIN),
        [PLAN],
        replace_origin=True,
        replace_session_connection=True,
    ).to_bytes()
    assert f"o=user1 53655765 2353687637 IN IP4 {RELAY}" in lines(out)
    assert lines(out)[3] == f"c=IN IP4 {RELAY}"
    assert b"192.0.2.1" not in out


def test_ipv6_relay_for_ipv4_peer_and_mux() -> None:
    plan = StreamPlan("2001:db8::99", 30000, 30001)
    out = rewrite(SessionDescription.parse(IPV6), [plan]).to_bytes()
    assert "c=IN IP6 2001:db8::99" in lines(out)
    # a=rtcp equal to the m= port means mux: it follows the RTP port.
    assert "a=rtcp:30000" in lines(out)
    out4 = rewrite(SessionDescription.parse(PLAIN), [plan], replace_origin=True).to_bytes()
    assert "c=IN IP6 2001:db8::99" in lines(out4)
    assert "a=rtcp:30001 IN IP6 2001:db8::99" in lines(out4)
    assert "o=user1 53655765 2353687637 IN IP6 2001:db8::99" in lines(out4)


def test_hold_with_zero_address_keeps_it() -> None:
    out = rewrite(SessionDescription.parse(HOLD_ZERO), [PLAN]).to_bytes()
    assert "c=IN IP4 0.0.0.0" in lines(out)
    assert "m=audio 30000 RTP/AVP 8" in lines(out)


def test_ice_remove() -> None:
    out = rewrite(SessionDescription.parse(LINPHONE), [PLAN, None], ice=IceMode.REMOVE).to_bytes()
    assert b"ice-" not in out and b"candidate" not in out
    out = rewrite(SessionDescription.parse(ASTERISK), [PLAN], ice=IceMode.REMOVE).to_bytes()
    assert b"ice-" not in out and b"candidate" not in out
    assert b"a=silenceSupp:off - - - -" in out


def test_ice_force_makes_the_relay_the_only_candidate() -> None:
    credentials = IceCredentials("abcd1234", "0123456789abcdefghijkl")
    plan = StreamPlan(RELAY, 30000, 30001, credentials)
    sdp = rewrite(SessionDescription.parse(LINPHONE), [plan, None], ice=IceMode.FORCE)
    assert sdp.ice_lite
    audio = sdp.media[0]
    assert audio.ice_credentials(sdp) == credentials
    assert [(c.component, c.address, c.port, c.type) for c in audio.candidates()] == [
        (1, RELAY, 30000, "host"),
        (2, RELAY, 30001, "host"),
    ]
    assert sdp.ice_ufrag is None  # the peer's session-level credentials are gone
    with pytest.raises(RelayError, match="credentials"):
        rewrite(SessionDescription.parse(LINPHONE), [PLAN, None], ice=IceMode.FORCE)


def test_ice_force_relay_keeps_defaults_and_replaces_relay_candidates() -> None:
    sdp_text = ASTERISK.replace(
        b"a=sendrecv",
        b"a=candidate:T1 1 UDP 16777215 198.51.100.50 40000 typ relay raddr 142.134.201.57 "
        b"rport 17234\r\na=sendrecv",
    )
    out = rewrite(SessionDescription.parse(sdp_text), [PLAN], ice=IceMode.FORCE_RELAY)
    assert out.connection is not None and out.connection.address == "10.0.1.40"
    assert out.media[0].port == 17234
    candidates = out.media[0].candidates()
    assert not any(c.address == "198.51.100.50" for c in candidates)
    assert [c.address for c in candidates if c.type == "relay"] == [RELAY, RELAY]


def test_no_ice_priority_none_inserts_nothing() -> None:
    out = rewrite(SessionDescription.parse(ASTERISK), [PLAN], priority=IcePriority.NONE).to_bytes()
    assert RELAY.encode() + b" 30000 typ" not in out


def test_rejected_stream_left_alone_and_plan_count_checked() -> None:
    sdp = SessionDescription.parse(AUDIO_VIDEO)
    out = rewrite(sdp, [PLAN, None]).to_bytes()
    assert "m=video 10002 RTP/AVP 96" in lines(out)
    with pytest.raises(RelayError, match="2 media sections"):
        rewrite(sdp, [PLAN])


def test_all_streams_share_the_session_connection() -> None:
    plans = [PLAN, StreamPlan(RELAY, 30002, 30003)]
    out = rewrite(SessionDescription.parse(AUDIO_VIDEO), plans).to_bytes()
    assert f"c=IN IP4 {RELAY}" in lines(out)
    assert "m=audio 30000 RTP/AVP 0" in lines(out)
    assert "m=video 30002 RTP/AVP 96" in lines(out)


def test_candidates_written_parse_back() -> None:
    for candidate in relay_candidates(PLAN, IcePriority.LOW, component_2=True):
        assert Candidate.parse(candidate.to_sdp()) == candidate
