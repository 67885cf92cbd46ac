"""The kernel plane's pure parts (what it would install, the nft text, reading counters) and
the relay's choice of data plane. The kernel itself is exercised in
tests/interop/test_relay_kernel.py, in network namespaces."""

from __future__ import annotations

import asyncio
import logging
import struct
import sys

import pytest

from icerelay.daemon import dataplanes
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService
from icerelay.dataplane.nfnetlink import address_port_key, mark_key
from icerelay.dataplane.nft_ruleset import MARK_BASE, Route, add_routes, ruleset, table_owner
from icerelay.dataplane.nftables import _parse, _wanted
from icerelay.dataplane.userspace import UserspaceDataPlane
from icerelay.errors import ConfigError
from icerelay.relay.forwarding import Forwarding, Leg
from icerelay.relay.latching import RTP, ForwardingState, decide
from icerelay.stun import Address, MessageClass, Method
from icerelay.stun.message import Message

RELAY = "10.0.0.1"
A, B = ("192.0.2.10", 4000), ("198.51.100.20", 6000)


def rtp(seq: int = 1) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x1234) + b"x" * 160


def state(host: str = RELAY) -> ForwardingState:
    return ForwardingState(
        Forwarding(
            "k1",
            Leg(Address(host, 30000), rtp_peer=Address(*A)),
            Leg(Address(host, 30002), rtp_peer=Address(*B)),
            strict_source=True,
        )
    )


def test_nothing_goes_to_the_kernel_until_both_legs_latched_by_media() -> None:
    forwarding = state()
    assert _wanted(forwarding) == [None, None]
    decide(forwarding.a, RTP, rtp(), A, 1.0)
    assert _wanted(forwarding) == [None, None]
    # An ICE check latches only provisionally: still not enough.
    check = Message(Method.BINDING, MessageClass.REQUEST, b"t" * 12).encode()
    decide(forwarding.b, RTP, check, B, 1.1)
    assert _wanted(forwarding) == [None, None]
    decide(forwarding.b, RTP, rtp(), B, 1.2)
    assert _wanted(forwarding) == [
        Route(0, A, (RELAY, 30000), B, (RELAY, 30002)),
        Route(0, B, (RELAY, 30002), A, (RELAY, 30000)),
    ]


def test_a_moved_latch_changes_the_route() -> None:
    forwarding = ForwardingState(
        Forwarding(
            "k1",
            Leg(Address(RELAY, 30000), rtp_peer=Address(*A)),
            Leg(Address(RELAY, 30002), rtp_peer=Address(*B)),
            handover_after=5.0,
        )
    )
    decide(forwarding.a, RTP, rtp(), A, 1.0)
    decide(forwarding.b, RTP, rtp(), B, 1.0)
    # A NAT rebinding: the same stream (SSRC, next sequence number) from a new source.
    moved = ("192.0.2.99", 4444)
    verdict = decide(forwarding.a, RTP, rtp(2), moved, 10.0)
    assert verdict.moved
    routes = _wanted(forwarding)
    assert routes[0] is not None and routes[0].source == moved
    assert routes[1] is not None and routes[1].destination == moved


def test_ipv6_streams_stay_in_userspace() -> None:
    forwarding = ForwardingState(
        Forwarding(
            "k6",
            Leg(Address("2001:db8::1", 30000), rtp_peer=Address("2001:db8::a", 4000)),
            Leg(Address("2001:db8::1", 30002), rtp_peer=Address("2001:db8::b", 6000)),
        )
    )
    decide(forwarding.a, RTP, rtp(), ("2001:db8::a", 4000), 1.0)
    decide(forwarding.b, RTP, rtp(), ("2001:db8::b", 6000), 1.0)
    assert _wanted(forwarding) == [None, None]


def test_nft_text() -> None:
    script = ruleset(30000, 30099, owner=4242)
    # The owner's pid is in the table's comment: a second relay will not take the table over.
    assert table_owner(script) == 4242
    assert table_owner("table ip icerelay {\n}") is None
    # A stale table is removed in the same transaction that creates the new one.
    assert script.startswith("add table ip icerelay\ndelete table ip icerelay\n")
    assert "udp dport 30000-30099" in script
    route = Route(5, A, (RELAY, 30000), B, (RELAY, 30002))
    added = add_routes([route])
    assert f"192.0.2.10 . 4000 . {RELAY} . 30000 : {MARK_BASE | 5:#x}" in added
    # The rewrite maps are filled before the element that makes packets match.
    assert added.index("dst_addr") < added.index("inbound")
    assert add_routes([]) == ""


def test_netlink_keys() -> None:
    # Each field of a concatenation is padded to 4 bytes; ports in network order.
    assert address_port_key(("192.0.2.1", 0x1234), ("10.0.0.1", 30000)) == bytes(
        [192, 0, 2, 1, 0x12, 0x34, 0, 0, 10, 0, 0, 1, 0x75, 0x30, 0, 0]
    )
    # A mark is in host order, as the meta mark register holds it.
    assert mark_key(0x01020304) == (0x01020304).to_bytes(4, sys.byteorder)


def test_counters_are_read_from_nft_listing() -> None:
    listing = (
        "table ip icerelay {\n\tmap inbound {\n\t\ttype ipv4_addr . inet_service . ipv4_addr"
        " . inet_service : mark\n\t\tcounter\n\t\telements = { 10.77.1.2 . 5000 . 10.77.1.1"
        " . 30000 counter packets 49 bytes 9800 : 0x1ce00001,\n\t\t\t     10.77.2.2 . 6000 . "
        "10.77.1.1 . 30002 counter packets 3 bytes 600 : 0x1ce00002 }\n\t}\n}\n"
    )
    assert _parse(listing) == {
        1: ("10.77.1.2 . 5000 . 10.77.1.1 . 30000", 49, 9800),
        2: ("10.77.2.2 . 6000 . 10.77.1.1 . 30002", 3, 600),
    }


def _config(dataplane: str) -> RelayServiceConfig:
    return RelayServiceConfig(
        ng_listen=("127.0.0.1", 0),
        mediaproxy_socket="",
        accounting="",
        dataplane=dataplane,  # type: ignore[arg-type]
    )


def test_kernel_refuses_to_start_without_nftables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataplanes, "unavailable_reason", lambda: "not running as root")
    service = RelayService(_config("kernel"))
    with pytest.raises(ConfigError, match="not running as root"):
        asyncio.run(service.start())


def test_auto_falls_back_to_userspace_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dataplanes, "unavailable_reason", lambda: "not running as root")

    async def main() -> None:
        service = RelayService(_config("auto"))
        await service.start()
        try:
            assert isinstance(service.dataplane, UserspaceDataPlane)
            assert service.dataplane_name == "userspace"
        finally:
            await service.stop()

    with caplog.at_level(logging.WARNING, logger="icerelay.relay"):
        asyncio.run(main())
    why = [r for r in caplog.records if r.getMessage() == "relay.dataplane_userspace"]
    assert len(why) == 1 and why[0].reason == "not running as root"  # type: ignore[attr-defined]
