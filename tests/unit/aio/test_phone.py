"""The phone's pieces in-process: two phones in one event loop, options, helpers."""

from __future__ import annotations

import asyncio

import pytest

from icerelay.aio.phone import Phone, PhoneOptions, PhoneResult
from icerelay.commands.phone import _address, _peer_target
from icerelay.endpoint.audio import dominant_frequency
from icerelay.endpoint.offer import default_candidate
from icerelay.endpoint.stats import StreamStatistics
from icerelay.errors import ConfigError
from icerelay.ice.candidate import CandidateType, make_local_candidate
from icerelay.sip.sipconf import parse_sip_conf


def test_two_phones_in_one_loop() -> None:
    async def main() -> tuple[PhoneResult, PhoneResult, list[str], Phone]:
        lines: list[str] = []
        ports: list[int] = []
        answerer = Phone(PhoneOptions(answer=True, wait=10, duration=10, tone=1000,
                                      rtcp_interval=0.5),
                         output=lines.append,
                         notice=lambda text: ports.append(int(text.rsplit(":", 1)[1])))
        task = asyncio.create_task(answerer.run())
        while not ports:
            await asyncio.sleep(0.01)
        caller = Phone(PhoneOptions(target=f"sip:bob@127.0.0.1:{ports[0]}", duration=0.6,
                                    tone=500, rtcp_interval=0.5, dtmf="7"),
                       output=lines.append, notice=lambda text: None)
        result = await caller.run()
        return result, await task, lines, caller

    result_a, result_b, lines, caller = asyncio.run(asyncio.wait_for(main(), 20))
    assert result_a.media_both_ways and result_b.media_both_ways
    assert result_b.end_reason == "remote hangup" and result_a.end_reason == "local hangup"
    assert "DTMF 7" in lines
    assert result_a.statistics is not None and result_a.statistics.packets_received > 20
    assert dominant_frequency(caller.recorder.samples[800:2400]) == pytest.approx(1000, abs=10)
    assert result_a.to_dict()["statistics"]["packets_lost"] == 0


def test_result_needs_media_both_ways() -> None:
    assert not PhoneResult().media_both_ways
    one_way = StreamStatistics(10, 1600, 0, 0, 0, 0, 0.0, None)
    assert not PhoneResult(established=True, statistics=one_way).media_both_ways
    both = StreamStatistics(10, 1600, 10, 1600, 10, 0, 0.0, 1)
    assert PhoneResult(established=True, statistics=both).media_both_ways


def test_addresses_and_peers() -> None:
    assert _address("127.0.0.1:5070", 5060) == ("127.0.0.1", 5070)
    assert _address("example.com", 5060) == ("example.com", 5060)
    assert _address("[::1]:5062", 5060) == ("::1", 5062)
    assert _address("[::1]", 5060) == ("::1", 5060)
    conf = parse_sip_conf("[bob]\nhost=192.0.2.1\nport=5070\nsecret=s\n[dyn]\nhost=dynamic\n")
    assert _peer_target("bob", conf, None) == ("sip:bob@192.0.2.1:5070", "s", "bob")
    assert _peer_target("bob", conf, "mine") == ("sip:bob@192.0.2.1:5070", "mine", "bob")
    assert _peer_target("sip:x@y", conf, None) == ("sip:x@y", None, None)
    with pytest.raises(ConfigError):
        _peer_target("dyn", conf, None)


def test_default_candidate_prefers_relay_then_srflx() -> None:
    host = make_local_candidate(CandidateType.HOST, ("10.0.0.1", 4000), ("10.0.0.1", 4000), 1)
    srflx = make_local_candidate(CandidateType.SERVER_REFLEXIVE, ("192.0.2.1", 5000),
                                 ("10.0.0.1", 4000), 1)
    assert default_candidate([host], 1) == ("10.0.0.1", 4000)
    assert default_candidate([host, srflx], 1) == ("192.0.2.1", 5000)
