"""ICE in SDP offer/answer: writing our side, reading the peer's (RFC 8839, RFC 5245 section 15)."""

from __future__ import annotations

import random
from dataclasses import replace

from icerelay.ice import Agent, AgentConfig, CandidateType, ConnectionState
from icerelay.ice.signalling import apply_remote_ice, default_candidate, write_ice
from icerelay.netsim import Network
from icerelay.sdp import (
    Connection,
    Direction,
    MediaDescription,
    MediaLine,
    Origin,
    SessionDescription,
    parse,
)
from icerelay.stun import Address, AttributeType, decode_message

STUN = ("198.51.100.1", 3478)
UFRAG, PWD = "0d9cc44338ad8ced48b2d92c34556f4e", "193c1361446d012a1e298d5278b5c4b6"


def asterisk_like_agent() -> Agent:
    """The agent of asterisk-ice.txt: two interfaces, RTP and RTCP, one STUN server."""
    agent = Agent(
        controlling=True,
        components=2,
        config=AgentConfig(stun_servers=(STUN,)),
        rng=random.Random(1),
        local_ufrag=UFRAG,
        local_pwd=PWD,
    )
    agent.gather(
        {
            1: [("10.0.1.40", 17234), ("10.0.3.15", 17234)],
            2: [("10.0.1.40", 17235), ("10.0.3.15", 17235)],
        },
        0.0,
    )
    for datagram in agent.datagrams_to_send(0.0):
        request = decode_message(datagram.data)
        if datagram.source[0] != "10.0.1.40":
            continue  # the second interface gets no answer (say, no route to the server)
        response = request.response()
        response.add(
            AttributeType.XOR_MAPPED_ADDRESS, Address("142.134.201.57", datagram.source[1])
        )
        agent.receive(response.encode(fingerprint=True), STUN, datagram.source, 0.05)
    return agent


def asterisk_like_offer(agent: Agent) -> SessionDescription:
    sdp = SessionDescription.new(
        Origin("root", "1903343929", "1903343929", "IN", "IP4", "10.0.1.40"),
        "Asterisk PBX SVN-trunk-r372051",
        Connection.for_address("10.0.1.40"),
    )
    audio = MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0", "3", "8", "101")))
    sdp.add_media(audio)
    for value in ("rtpmap:0 PCMU/8000", "rtpmap:3 GSM/8000", "rtpmap:8 PCMA/8000"):
        name, _, rest = value.partition(":")
        audio.add_attribute(name, rest)
    write_ice(agent, audio, sdp, trickle=False, preference=(CandidateType.HOST,))
    audio.set_direction(Direction.SENDRECV)
    return sdp


def test_offer_has_the_shape_of_the_asterisk_sample() -> None:
    agent = asterisk_like_agent()
    lines = asterisk_like_offer(agent).to_text().splitlines()
    ice = [line for line in lines if line.startswith(("a=ice", "a=candidate", "a=end"))]
    assert ice[:2] == [f"a=ice-ufrag:{UFRAG}", f"a=ice-pwd:{PWD}"]
    shape = [line.split()[1:] for line in ice[2:] if line.startswith("a=candidate")]
    # component, transport, priority, address, port, typ, type (+ raddr/rport for srflx)
    assert [fields[:7] for fields in shape] == [
        ["1", "UDP", "2130706431", "10.0.1.40", "17234", "typ", "host"],
        ["1", "UDP", "2130706175", "10.0.3.15", "17234", "typ", "host"],
        ["1", "UDP", "1694498815", "142.134.201.57", "17234", "typ", "srflx"],
        ["2", "UDP", "2130706430", "10.0.1.40", "17235", "typ", "host"],
        ["2", "UDP", "2130706174", "10.0.3.15", "17235", "typ", "host"],
        ["2", "UDP", "1694498814", "142.134.201.57", "17235", "typ", "srflx"],
    ]
    # RFC 8445 section 5.1.2.1: two host candidates of a component need different local
    # preferences (Asterisk gives both 65535); hence 2130706175 for the second interface.
    assert shape[2][7:] == ["raddr", "10.0.1.40", "rport", "17234"]
    assert "m=audio 17234 RTP/AVP 0 3 8 101" in lines
    assert "c=IN IP4 10.0.1.40" in lines
    assert not any(line.startswith("a=rtcp") for line in lines)  # RTCP is on RTP + 1
    assert lines[-1] == "a=sendrecv"
    assert "a=end-of-candidates" not in lines  # the second interface is still waiting


def test_default_candidate_prefers_what_works_best() -> None:
    agent = asterisk_like_agent()
    rtp = default_candidate(agent, 1)
    assert rtp is not None and rtp.type is CandidateType.SERVER_REFLEXIVE
    sdp = SessionDescription.new(Origin("-", "1", "1", "IN", "IP4", "127.0.0.1"))
    audio = MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",)))
    sdp.add_media(audio)
    write_ice(agent, audio, sdp)
    text = sdp.to_text()
    assert "m=audio 17234 RTP/AVP 0" in text
    assert "c=IN IP4 142.134.201.57" in text
    assert "a=rtcp:17235 IN IP4 142.134.201.57" not in text  # port + 1 on the same address
    assert "a=ice-options:trickle" in text


def offer_answer(network: Network, offerer: Agent, answerer: Agent) -> None:
    """One SDP round trip, through text, as over SIP."""
    offer = SessionDescription.new(Origin("-", "1", "1", "IN", "IP4", "192.0.2.1"))
    offer.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(offerer, offer.media[0], offer)
    received = parse(offer.to_text())
    result = apply_remote_ice(answerer, received.media[0], received, network.now)
    assert result.uses_ice and not result.mismatch
    answer = SessionDescription.new(Origin("-", "2", "2", "IN", "IP4", "192.0.2.2"))
    answer.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(answerer, answer.media[0], answer)
    back = parse(answer.to_text())
    apply_remote_ice(offerer, back.media[0], back, network.now)


def two_public_agents() -> tuple[Network, Agent, Agent]:
    network = Network()
    agents = []
    for index, ip in enumerate(("192.0.2.1", "192.0.2.2")):
        agent = Agent(controlling=index == 0, rng=random.Random(index))
        agent.gather({1: [(ip, 5000)]}, 0.0)
        network.add_host(f"h{index}", ip).attach(agent)
        agents.append(agent)
    return network, agents[0], agents[1]


def test_offer_answer_through_sdp_connects_and_updates_the_offer() -> None:
    network, offerer, answerer = two_public_agents()
    offer_answer(network, offerer, answerer)
    assert network.run_until(
        lambda: offerer.state is answerer.state is ConnectionState.COMPLETED, 5.0
    )
    # The controlling agent's updated offer names the remote candidates it selected.
    updated = SessionDescription.new(Origin("-", "1", "2", "IN", "IP4", "192.0.2.1"))
    updated.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(offerer, updated.media[0], updated)
    assert "a=remote-candidates:1 192.0.2.2 5000" in updated.to_text()
    reread = parse(updated.to_text())
    result = apply_remote_ice(answerer, reread.media[0], reread, network.now)
    assert not result.restarted
    assert [(r.address, r.port) for r in result.remote_candidates] == [("192.0.2.2", 5000)]


def test_new_credentials_in_an_offer_restart_ice() -> None:
    network, offerer, answerer = two_public_agents()
    offer_answer(network, offerer, answerer)
    network.run_until(lambda: offerer.state is ConnectionState.COMPLETED, 5.0)
    offerer.restart(network.now)
    renewed = SessionDescription.new(Origin("-", "1", "3", "IN", "IP4", "192.0.2.1"))
    renewed.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(offerer, renewed.media[0], renewed)
    reread = parse(renewed.to_text())
    old = answerer.local_username
    result = apply_remote_ice(answerer, reread.media[0], reread, network.now)
    assert result.restarted and answerer.local_username != old


PEER_SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\na=ice-ufrag:peerufrag\r\na=ice-pwd:peerpasswordpeerpassword\r\n"
    "a=candidate:1 1 UDP 2130706431 192.0.2.9 4000 typ host\r\n"
    "a=candidate:2 1 TCP 2105524479 192.0.2.9 9 typ host tcptype active\r\n"
    "a=candidate:3 1 UDP 2130706430 abcd.local 4002 typ host\r\n"
)


def fresh_agent() -> Agent:
    agent = Agent(controlling=False, rng=random.Random(5))
    agent.gather({1: [("192.0.2.1", 5000)]}, 0.0)
    return agent


def test_rewritten_default_destination_is_an_ice_mismatch() -> None:
    agent = fresh_agent()
    sdp = parse(PEER_SDP.format(c="203.0.113.80", port=30000))  # an ALG rewrote c=/m=
    result = apply_remote_ice(agent, sdp.media[0], sdp, 0.0)
    assert result.mismatch and not result.uses_ice
    assert agent.remote_credentials is None  # ICE does not run for this stream


def test_unusable_candidates_are_skipped_and_trickle_placeholder_is_fine() -> None:
    agent = fresh_agent()
    sdp = parse(PEER_SDP.format(c="0.0.0.0", port=9))
    result = apply_remote_ice(agent, sdp.media[0], sdp, 0.0)
    assert not result.mismatch
    assert result.skipped == 2
    assert [c.address for c in result.candidates] == [("192.0.2.9", 4000)]
    assert agent.remote_credentials == ("peerufrag", "peerpasswordpeerpassword")
    sdp = parse(PEER_SDP.format(c="192.0.2.9", port=4000))
    assert not apply_remote_ice(fresh_agent(), sdp.media[0], sdp, 0.0).mismatch


def test_lite_agent_announces_ice_lite() -> None:
    agent = Agent(controlling=False, lite=True, rng=random.Random(1))
    agent.gather({1: [("192.0.2.1", 5000)]}, 0.0)
    sdp = SessionDescription.new(Origin("-", "1", "1", "IN", "IP4", "192.0.2.1"))
    sdp.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(agent, sdp.media[0], sdp)
    text = sdp.to_text()
    assert "a=ice-lite" in text and "a=end-of-candidates" in text and "a=rtcp-mux" in text
    assert parse(text).ice_lite


def test_ice_pacing_is_announced_and_the_larger_ta_wins() -> None:
    slow = Agent(controlling=True, config=AgentConfig(ta=0.1), rng=random.Random(1))
    slow.gather({1: [("192.0.2.1", 5000)]}, 0.0)
    sdp = SessionDescription.new(Origin("-", "1", "1", "IN", "IP4", "192.0.2.1"))
    sdp.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(slow, sdp.media[0], sdp)
    assert "a=ice-pacing:100" in sdp.to_text()
    fast = fresh_agent()
    reread = parse(sdp.to_text())
    apply_remote_ice(fast, reread.media[0], reread, 0.0)
    fast.add_remote_candidate(slow.local_candidates[0], 0.0)
    host = fast.local_candidates[0]
    fast.add_remote_candidate(replace(host, host="192.0.2.77", base=None, foundation="zz"), 0.0)
    assert len(fast.datagrams_to_send(0.0)) == 1
    fast.handle_timer(0.06)
    assert fast.datagrams_to_send(0.06) == []  # our Ta (50 ms) has passed, the peer's not
    fast.handle_timer(0.1)
    assert len(fast.datagrams_to_send(0.1)) == 1  # paced at the peer's 100 ms
    default = fresh_agent()
    out = SessionDescription.new(Origin("-", "1", "1", "IN", "IP4", "192.0.2.1"))
    out.add_media(MediaDescription.new(MediaLine("audio", 0, "RTP/AVP", ("0",))))
    write_ice(default, out.media[0], out)
    assert "ice-pacing" not in out.to_text()
