"""rtp.conf ICE options read as Asterisk reads them (res_rtp_asterisk.c, main/acl.c)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from icerelay.errors import ConfigError
from icerelay.ice import Agent
from icerelay.ice.config import AgentConfig
from icerelay.ice.relay import TurnServer
from icerelay.ice.rtpconf import (
    Acl,
    HostCandidateMapping,
    ServerAddress,
    load_rtp_conf,
    parse_acl_items,
    parse_rtp_conf,
)

# The shape of the configuration in the seed document (asterisk-ice.txt), addresses made literal.
SEED = """
[general]
rtpstart=10000
rtpend=20000
icesupport=yes
stunaddr=192.0.2.7
turnaddr=192.0.2.8
turnusername=relayme
turnpassword=please
"""


def never_resolve(host: str) -> str:
    raise AssertionError(f"unexpected DNS lookup of {host}")


def test_seed_configuration() -> None:
    settings = parse_rtp_conf(SEED)
    assert settings.icesupport
    assert settings.stun_server == ServerAddress("192.0.2.7", 3478)
    assert settings.turn_server == ServerAddress("192.0.2.8", 3478)
    assert settings.port_range == (10000, 20000)
    assert settings.warnings == ()
    config = settings.agent_config(resolve=never_resolve)
    assert config.stun_servers == (("192.0.2.7", 3478),)
    assert settings.turn_servers(resolve=never_resolve) == (
        TurnServer(("192.0.2.8", 3478), "relayme", "please"),
    )


def test_empty_file_gives_asterisk_defaults() -> None:
    settings = parse_rtp_conf("")
    assert settings.icesupport  # DEFAULT_ICESUPPORT is 1 in the code (the sample says otherwise)
    assert settings.stun_server is None and settings.turn_server is None
    assert settings.port_range == (5000, 31000)
    assert settings.agent_config(resolve=never_resolve).stun_servers == ()
    assert settings.turn_servers(resolve=never_resolve) == ()


def test_agent_config_keeps_the_base_tunables() -> None:
    base = AgentConfig(ta=0.02, stun_servers=(("198.51.100.1", 3478),))
    settings = parse_rtp_conf("[general]\nstunaddr=192.0.2.7:3479\n")
    config = settings.agent_config(base, resolve=never_resolve)
    assert config.ta == 0.02
    assert config.stun_servers == (("192.0.2.7", 3479),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", True),
        ("YES", True),
        ("true", True),
        ("y", True),
        ("t", True),
        ("1", True),
        ("on", True),
        ("no", False),
        ("false", False),
        ("0", False),
        ("enabled", False),  # ast_true knows only its six words
        ("", False),
    ],
)
def test_icesupport_is_ast_true(value: str, expected: bool) -> None:
    settings = parse_rtp_conf(f"[general]\nicesupport={value}\nstunaddr=192.0.2.7\n")
    assert settings.icesupport is expected
    # Without ICE no servers are handed to the agent.
    assert bool(settings.agent_config(resolve=never_resolve).stun_servers) is expected


def test_last_occurrence_wins_and_names_are_case_insensitive() -> None:
    settings = parse_rtp_conf(
        "[GENERAL]\nStunAddr = 192.0.2.1\nicesupport = no\nICESUPPORT => yes\nstunaddr=192.0.2.2\n"
    )
    assert settings.stun_server == ServerAddress("192.0.2.2", 3478)
    assert settings.icesupport


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.7", ServerAddress("192.0.2.7", 3478)),
        ("192.0.2.7:19302", ServerAddress("192.0.2.7", 19302)),
        ("192.0.2.7:0", ServerAddress("192.0.2.7", 3478)),  # port 0 = unset
        ("stun.example.net", ServerAddress("stun.example.net", 3478)),
        ("stun.example.net:5349", ServerAddress("stun.example.net", 5349)),
        ("stun.example.net:99999", ServerAddress("stun.example.net", 3478)),  # out of range
        ("stun.example.net:abc", ServerAddress("stun.example.net", 3478)),
        ("", None),
        ("[2001:db8::1]:3478", None),  # Asterisk's STUN is IPv4 only
        ("2001:db8::1", None),
    ],
)
def test_stunaddr(value: str, expected: ServerAddress | None) -> None:
    assert parse_rtp_conf(f"[general]\nstunaddr={value}\n").stun_server == expected


def test_stun_host_name_is_resolved_when_used() -> None:
    settings = parse_rtp_conf("[general]\nstunaddr=stun.example.net:3479\n")
    lookups: list[str] = []

    def resolve(host: str) -> str:
        lookups.append(host)
        return "192.0.2.99"

    assert settings.stun_servers(resolve=resolve) == (("192.0.2.99", 3479),)
    assert lookups == ["stun.example.net"]

    def fail(host: str) -> str:
        raise OSError("NXDOMAIN")

    # Asterisk carries on without STUN when the name does not resolve.
    assert settings.agent_config(resolve=fail).stun_servers == ()


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("turnaddr=192.0.2.8", ServerAddress("192.0.2.8", 3478)),
        ("turnaddr=192.0.2.8:34780", ServerAddress("192.0.2.8", 34780)),
        ("turnaddr=turn.example.net:3479", ServerAddress("turn.example.net", 3479)),
        # turnport (Asterisk 11 betas, and the ICE wiki page) when turnaddr has no port:
        ("turnaddr=192.0.2.8\nturnport=3479", ServerAddress("192.0.2.8", 3479)),
        ("turnport=3479\nturnaddr=192.0.2.8", ServerAddress("192.0.2.8", 3479)),
        ("turnaddr=192.0.2.8:34780\nturnport=3479", ServerAddress("192.0.2.8", 34780)),
        ("turnaddr=192.0.2.8\nturnport=abc", ServerAddress("192.0.2.8", 3478)),  # atoi -> 0
        ("turnaddr=192.0.2.8\nturnport=3480xyz", ServerAddress("192.0.2.8", 3480)),  # atoi
        ("turnaddr=192.0.2.8:nope", ServerAddress("192.0.2.8", 3478)),
        ("turnport=3479", None),  # no server without turnaddr
        ("turnaddr=2001:db8::8", None),  # PARSE_INADDR: IPv4 only
    ],
)
def test_turnaddr_and_turnport(lines: str, expected: ServerAddress | None) -> None:
    assert parse_rtp_conf(f"[general]\n{lines}\n").turn_server == expected


def test_turnport_is_reported_as_legacy() -> None:
    settings = parse_rtp_conf("[general]\nturnaddr=192.0.2.8\nturnport=3479\n")
    assert any("turnport" in warning for warning in settings.warnings)


def test_turn_credentials_may_be_empty() -> None:
    settings = parse_rtp_conf("[general]\nturnaddr=192.0.2.8\n")
    assert settings.turn_servers(resolve=never_resolve) == (
        TurnServer(("192.0.2.8", 3478), "", ""),
    )


# --- ACLs ----------------------------------------------------------------------------------


def test_no_acl_allows_everything() -> None:
    acl = parse_rtp_conf("[general]\n").ice_acl
    assert acl.empty
    assert acl.allows("10.0.0.1") and acl.allows("2001:db8::1")


def test_ice_deny_and_permit_last_match_wins() -> None:
    settings = parse_rtp_conf(
        "[general]\nice_deny=0.0.0.0/0\nice_permit=10.0.0.0/8\nice_deny=10.9.0.0/255.255.0.0\n"
    )
    acl = settings.ice_acl
    assert not acl.allows("192.0.2.1")
    assert acl.allows("10.1.2.3")
    assert not acl.allows("10.9.1.1")
    # IPv4 rules never touch IPv6 addresses.
    assert acl.allows("2001:db8::1")
    assert settings.host_addresses(["10.1.2.3", "10.9.1.1", "192.0.2.1", "2001:db8::1"]) == [
        "10.1.2.3",
        "2001:db8::1",
    ]


def test_order_matters() -> None:
    # The same rules in the other order: the later deny-all decides for everyone.
    acl = parse_rtp_conf("[general]\nice_permit=10.0.0.0/8\nice_deny=0.0.0.0/0\n").ice_acl
    assert not acl.allows("10.1.2.3")


def test_ice_blacklist_is_a_deprecated_deny() -> None:
    settings = parse_rtp_conf("[general]\nice_blacklist=192.168.0.0/16\n")
    assert not settings.ice_acl.allows("192.168.1.1")
    assert settings.ice_acl.allows("10.0.0.1")
    assert any("deprecated" in warning for warning in settings.warnings)


def test_stun_blacklist_and_stun_permit() -> None:
    settings = parse_rtp_conf(
        "[general]\nstun_blacklist=10.8.0.0/16\nstun_deny=172.16.0.0/12\nstun_permit=172.16.5.0/24\n"
    )
    assert not settings.stun_allowed("10.8.0.5")  # e.g. a VPN interface
    assert not settings.stun_allowed("172.20.0.1")
    assert settings.stun_allowed("172.16.5.9")
    assert settings.stun_allowed("192.168.1.10")
    # The STUN ACL does not hide host candidates.
    assert settings.ice_acl.allows("10.8.0.5")


def test_comma_lists_negation_and_masking() -> None:
    rules = parse_acl_items("10.1.2.3/8, !10.5.0.0/16,192.0.2.1", False, [])
    assert [str(r.network) for r in rules] == ["10.0.0.0/8", "10.5.0.0/16", "192.0.2.1/32"]
    assert [r.permit for r in rules] == [False, True, False]
    acl = Acl(tuple(rules))
    assert not acl.allows("10.1.1.1")
    assert acl.allows("10.5.1.1")  # '!' turned this deny item into a permit
    assert not acl.allows("192.0.2.1") and acl.allows("192.0.2.2")


def test_ipv6_rules_and_ipv4_mapped_addresses() -> None:
    acl = parse_rtp_conf("[general]\nice_deny=2001:db8::/32\nice_deny=192.0.2.0/24\n").ice_acl
    assert not acl.allows("2001:db8::5")
    assert acl.allows("2001:db9::5")
    assert not acl.allows("::ffff:192.0.2.1")  # IPv4 rules apply to IPv4-mapped addresses
    assert acl.allows("10.0.0.1")


def test_an_invalid_item_ends_its_line_but_keeps_earlier_items() -> None:
    warnings: list[str] = []
    rules = parse_acl_items("10.0.0.0/8,not-an-ip,192.0.2.0/24", False, warnings)
    assert [str(r.network) for r in rules] == ["10.0.0.0/8"]
    assert warnings
    assert parse_acl_items("10.0.0.0/33", False, []) == []
    assert parse_acl_items("10.0.0.0/ffff::", False, []) == []  # families differ


def test_named_acls() -> None:
    text = "[general]\nice_acl=lan\n"
    settings = parse_rtp_conf(text, named_acls={"lan": "deny=0.0.0.0/0;permit=10.0.0.0/8"})
    assert settings.ice_acl.allows("10.0.0.1")
    assert not settings.ice_acl.allows("192.0.2.1")
    # An ACL name acl.conf does not define rejects everything, as Asterisk does.
    missing = parse_rtp_conf(text)
    assert not missing.ice_acl.allows("10.0.0.1")
    assert missing.host_addresses(["10.0.0.1"]) == []


def test_named_and_baseline_acls_must_both_allow() -> None:
    settings = parse_rtp_conf(
        "[general]\nice_acl=lan\nice_deny=10.9.0.0/16\n",
        named_acls={"lan": "deny=0.0.0.0/0;permit=10.0.0.0/8"},
    )
    assert settings.ice_acl.allows("10.1.0.1")
    assert not settings.ice_acl.allows("10.9.0.1")


# --- [ice_host_candidates] ------------------------------------------------------------------------


def test_host_candidate_mapping_replaces_the_local_address() -> None:
    settings = parse_rtp_conf("[ice_host_candidates]\n192.168.1.10 => 1.2.3.4\n")
    assert settings.host_candidates == (HostCandidateMapping("192.168.1.10", "1.2.3.4"),)
    assert settings.advertised_hosts("192.168.1.10") == ["1.2.3.4"]
    assert settings.advertised_hosts("192.168.1.11") == ["192.168.1.11"]  # unmatched: unaltered
    assert settings.host_mappings() == (("192.168.1.10", "1.2.3.4", False),)


def test_include_local_address() -> None:
    settings = parse_rtp_conf(
        "[ice_host_candidates]\n192.168.1.10 => 1.2.3.4, include_local_address\n"
        "2001:db8::10 => 2001:db8:ffff::10,include_local_address\n"
    )
    assert settings.advertised_hosts("192.168.1.10") == ["1.2.3.4", "192.168.1.10"]
    assert settings.advertised_hosts("2001:db8::10") == ["2001:db8:ffff::10", "2001:db8::10"]


def test_unknown_option_after_comma_means_replace() -> None:
    settings = parse_rtp_conf("[ice_host_candidates]\n192.168.1.10 => 1.2.3.4,INCLUDE_LOCAL\n")
    assert settings.advertised_hosts("192.168.1.10") == ["1.2.3.4"]


def test_ports_are_ignored_and_bad_lines_skipped() -> None:
    settings = parse_rtp_conf(
        "[ice_host_candidates]\n192.168.1.10:5000 => 1.2.3.4:6000\nbogus => 1.2.3.4\n"
        "192.168.1.12 => nothing\n"
    )
    assert settings.host_candidates == (HostCandidateMapping("192.168.1.10", "1.2.3.4"),)
    assert len(settings.warnings) == 2


def test_acl_applies_to_advertised_and_local_addresses() -> None:
    settings = parse_rtp_conf(
        "[general]\nice_deny=192.168.0.0/16\n"
        "[ice_host_candidates]\n192.168.1.10 => 1.2.3.4,include_local_address\n"
    )
    # The local address is denied, but its socket is needed for the advertised one.
    assert settings.advertised_hosts("192.168.1.10") == ["1.2.3.4"]
    assert settings.host_addresses(["192.168.1.10", "192.168.1.11"]) == ["192.168.1.10"]


# --- file format --------------------------------------------------------------------------------


def test_comments_blocks_and_escapes() -> None:
    settings = parse_rtp_conf(
        "; a comment\n[general] ; trailing\n;-- a block\nstunaddr=192.0.2.1\n--;\n"
        "turnaddr=192.0.2.8 ; the relay\nturnpassword=a\\;b\n"
    )
    assert settings.stun_server is None  # inside the block comment
    assert settings.turn_server == ServerAddress("192.0.2.8", 3478)
    assert settings.turn_password == "a;b"


def test_templates_and_additions() -> None:
    settings = parse_rtp_conf(
        "[base](!)\nstunaddr=192.0.2.1\nturnusername=u\n"
        "[general](base)\nstunaddr=192.0.2.2\n"
        "[other]\nstunaddr=192.0.2.3\n"
        "[general](+)\nturnaddr=192.0.2.8\n"
    )
    assert settings.stun_server == ServerAddress("192.0.2.2", 3478)  # own value beats template
    assert settings.turn_username == "u"
    assert settings.turn_server == ServerAddress("192.0.2.8", 3478)


def test_a_second_general_section_is_not_read() -> None:
    # ast_variable_browse reads the first [general] only.
    settings = parse_rtp_conf("[general]\nstunaddr=192.0.2.1\n[general]\nstunaddr=192.0.2.2\n")
    assert settings.stun_server == ServerAddress("192.0.2.1", 3478)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("rtpstart=10001\nrtpend=20000", (10002, 20000)),
        ("rtpstart=100\nrtpend=70000", (1024, 65535)),
        ("rtpstart=20000\nrtpend=10000", (5000, 31000)),
    ],
)
def test_port_range(lines: str, expected: tuple[int, int]) -> None:
    assert parse_rtp_conf(f"[general]\n{lines}\n").port_range == expected


def test_load_file_with_include(tmp_path: Path) -> None:
    (tmp_path / "rtp_custom.conf").write_text("turnaddr=192.0.2.8:3479\nturnusername=u\n")
    conf = tmp_path / "rtp.conf"
    conf.write_text('[general]\nstunaddr=192.0.2.7\n#include "rtp_custom.conf"\n')
    settings = load_rtp_conf(conf)
    assert settings.stun_server == ServerAddress("192.0.2.7", 3478)
    assert settings.turn_server == ServerAddress("192.0.2.8", 3479)
    assert settings.turn_username == "u"
    with pytest.raises(ConfigError):
        load_rtp_conf(tmp_path / "missing.conf")


# --- into the agent -----------------------------------------------------------------------------


def test_agent_config_carries_mappings_and_stun_acl() -> None:
    settings = parse_rtp_conf(
        "[general]\nstunaddr=192.0.2.7\nstun_deny=10.8.0.0/16\n"
        "[ice_host_candidates]\n192.168.1.10 => 1.2.3.4\n192.168.1.10 => 5.6.7.8\n"
    )
    config = settings.agent_config(resolve=never_resolve)
    assert config.host_mappings == (("192.168.1.10", "1.2.3.4", False),)  # first line wins
    assert config.stun_base_allowed is not None
    assert not config.stun_base_allowed("10.8.0.5")
    assert config.stun_base_allowed("192.168.1.10")
    # No STUN ACL: no filter at all.
    assert parse_rtp_conf("").agent_config(resolve=never_resolve).stun_base_allowed is None


def test_mappings_with_acl_applied() -> None:
    settings = parse_rtp_conf(
        "[general]\nice_deny=192.168.0.0/16\nice_deny=9.9.9.9\n"
        "[ice_host_candidates]\n192.168.1.10 => 1.2.3.4,include_local_address\n"
        "10.0.0.5 => 9.9.9.9,include_local_address\n"
        "10.0.0.6 => 9.9.9.9\n"
    )
    assert settings.host_mappings() == (("192.168.1.10", "1.2.3.4", False),)
    # 10.0.0.5: advertised denied, local kept (announced as itself); 10.0.0.6: nothing left.
    assert settings.host_addresses(["192.168.1.10", "10.0.0.5", "10.0.0.6"]) == [
        "192.168.1.10",
        "10.0.0.5",
    ]


def test_the_agent_gathers_as_asterisk_would() -> None:
    """The real (sans-I/O) agent with the configuration from rtp.conf: what it announces and
    where its STUN requests go."""
    settings = parse_rtp_conf(
        "[general]\nstunaddr=192.0.2.7:3479\nstun_deny=10.8.0.0/16\nice_deny=172.16.0.0/12\n"
        "[ice_host_candidates]\n192.168.1.10 => 203.0.113.5\n"
    )
    interfaces = ["192.168.1.10", "10.8.0.5", "172.16.0.9"]
    addresses = settings.host_addresses(interfaces)
    assert addresses == ["192.168.1.10", "10.8.0.5"]
    agent = Agent(
        controlling=True, config=settings.agent_config(resolve=never_resolve), rng=random.Random(1)
    )
    agent.gather({1: [(ip, 40000 + i * 2) for i, ip in enumerate(addresses)]}, now=0.0)
    hosts = [(c.host, c.port, c.base) for c in agent.local_candidates]
    assert hosts == [
        ("203.0.113.5", 40000, ("192.168.1.10", 40000)),  # 1:1 NAT, sent from the local socket
        ("10.8.0.5", 40002, ("10.8.0.5", 40002)),
    ]
    stun = [(d.source, d.destination) for d in agent.datagrams_to_send(0.0)]
    assert stun == [(("192.168.1.10", 40000), ("192.0.2.7", 3479))]  # not from the VPN 10.8/16
