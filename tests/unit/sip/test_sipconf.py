"""chan_sip's sip.conf as Asterisk reads it: per-peer icesupport, templates, comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from icerelay.errors import ConfigError
from icerelay.sip.sipconf import is_true, load_sip_conf, parse_sip_conf

SIP_CONF = r"""
[general]
context=default ; a comment
icesupport=no

;-- a block comment
icesupport=yes
--;

[phones](!)            ; a template
type=friend
icesupport=yes
host=dynamic

[alice](phones)
secret=pass\;word
defaultuser=alice

[bob](phones)
icesupport=no
host => 192.0.2.20
port=5070

[carol]
host=192.0.2.30
port=bogus
"""


def test_per_peer_icesupport_with_templates() -> None:
    conf = parse_sip_conf(SIP_CONF)
    assert conf.general.get("icesupport") == "no"  # the block comment is not read
    assert conf.icesupport("alice") is True  # from the template
    assert conf.icesupport("bob") is False  # its own line comes after the template's
    assert conf.icesupport("carol") is False  # [general]
    assert conf.icesupport(None) is False
    assert "phones" not in conf.peers
    alice, bob, carol = conf.peers["alice"], conf.peers["bob"], conf.peers["carol"]
    assert alice.secret == "pass;word" and alice.user == "alice" and alice.host is None
    assert (bob.host, bob.port) == ("192.0.2.20", 5070)
    assert carol.port == 5060  # an invalid port falls back to the default
    assert conf.warnings == ()


def test_general_yes_and_ast_true() -> None:
    conf = parse_sip_conf("[general]\nicesupport = On\n[dave]\nhost=x\n")
    assert conf.icesupport("dave") and conf.icesupport("nobody")
    assert [is_true(v) for v in ("yes", "TRUE", "1", "t", "no", "0", "", None)] == [
        True, True, True, True, False, False, False, False]


def test_odd_lines_are_warnings_and_include(tmp_path: Path) -> None:
    (tmp_path / "peers.conf").write_text("[erin](missing)\nicesupport=yes\n")
    (tmp_path / "sip.conf").write_text("orphan=1\n[general]\nnot an option\n"
                                       '#include "peers.conf"\n#include "absent.conf"\n')
    conf = load_sip_conf(tmp_path / "sip.conf")
    assert conf.icesupport("erin")
    assert len(conf.warnings) == 4  # orphan option, bad line, unknown template, missing include
    with pytest.raises(ConfigError):
        load_sip_conf(tmp_path / "nope.conf")
