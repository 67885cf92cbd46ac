"""The parts of Asterisk's chan_sip ``sip.conf`` that a phone needs: per-peer ``icesupport``.

Asterisk's sip.conf turns ICE on for chan_sip globally (``[general] icesupport=yes``) or per peer
(``[bob]`` ... ``icesupport=yes``); the peer's setting wins. chan_sip's default is *no* (ICE is
on by default in rtp.conf, but off in chan_sip). A peer section also gives ``host``/``port``,
``secret`` and ``defaultuser``/``username``, which ``icerelay phone`` uses when calling a peer
by name.

The file syntax is Asterisk's: ``[section]``, templates (``[tmpl](!)`` defines one,
``[bob](tmpl1,tmpl2)`` inherits their options in order, then its own), ``key = value`` or
``key => value``, ``;`` comments (``\\;`` is a literal semicolon), ``;-- ... --;`` block
comments, and ``#include "file"`` relative to the including file. Later lines override earlier
ones for single-valued options, as in chan_sip. Nothing here raises on odd input that Asterisk
would load: such lines are collected in :attr:`SipConf.warnings`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from icerelay.errors import ConfigError
from icerelay.numbers import parse_port

_SECTION = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?\s*$")
_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})


def is_true(value: str | None) -> bool:
    """Asterisk's ``ast_true``."""
    return value is not None and value.strip().lower() in _TRUE


@dataclass
class _Section:
    name: str
    options: list[tuple[str, str]] = field(default_factory=list)
    template: bool = False
    parents: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SipPeer:
    """One ``[peer]`` section, templates applied."""

    name: str
    options: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """The last value of ``key`` (chan_sip reads single-valued options that way)."""
        key = key.lower()
        value = None
        for name, item in self.options:
            if name == key:
                value = item
        return value

    @property
    def host(self) -> str | None:
        host = self.get("host")
        return None if host is None or host.lower() == "dynamic" else host

    @property
    def port(self) -> int:
        text = self.get("port") or ""
        return parse_port(text.strip()) or 5060

    @property
    def secret(self) -> str | None:
        return self.get("secret")

    @property
    def user(self) -> str | None:
        return self.get("defaultuser") or self.get("username")


@dataclass(frozen=True)
class SipConf:
    general: SipPeer
    peers: dict[str, SipPeer]
    warnings: tuple[str, ...] = ()

    def icesupport(self, peer: str | None) -> bool:
        """ICE for a call with ``peer`` (None: no matching peer): the peer's setting, else
        ``[general]``'s, else no."""
        section = self.peers.get(peer) if peer is not None else None
        value = section.get("icesupport") if section is not None else None
        if value is None:
            value = self.general.get("icesupport")
        return is_true(value)


def _strip_comment(line: str, in_block: bool) -> tuple[str, bool]:
    out: list[str] = []
    index = 0
    while index < len(line):
        if in_block:
            end = line.find("--;", index)
            if end < 0:
                return "".join(out), True
            index = end + 3
            in_block = False
            continue
        if line.startswith(";--", index):
            in_block = True
            index += 3
            continue
        char = line[index]
        if char == "\\" and line.startswith(";", index + 1):
            out.append(";")
            index += 2
            continue
        if char == ";":
            break
        out.append(char)
        index += 1
    return "".join(out), in_block


def _read(path: Path, sections: list[_Section], warnings: list[str], depth: int = 0) -> None:
    if depth > 10:
        warnings.append(f"{path}: #include nested too deep")
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        if depth == 0:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        warnings.append(f"cannot read included {path}: {exc}")
        return
    parse_into(text, sections, warnings, base_dir=path.parent, depth=depth)


def parse_into(text: str, sections: list[_Section], warnings: list[str], *,
               base_dir: Path | None = None, depth: int = 0) -> None:
    in_block = False
    for number, raw in enumerate(text.splitlines(), 1):
        line, in_block = _strip_comment(raw, in_block)
        line = line.strip()
        if not line:
            continue
        if line.startswith("#include"):
            name = line[len("#include"):].strip().strip('"<>')
            if base_dir is not None and name:
                _read(base_dir / name, sections, warnings, depth + 1)
            continue
        if line.startswith("#"):
            continue  # #exec and friends: not for a phone
        match = _SECTION.match(line)
        if match:
            flags = [f.strip() for f in (match[2] or "").split(",") if f.strip()]
            sections.append(_Section(match[1].strip().lower(), template="!" in flags,
                                     parents=[f.lower() for f in flags if f not in ("!", "+")]))
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            warnings.append(f"line {number}: not an option: {raw.strip()!r}")
            continue
        value = value[1:] if value.startswith(">") else value
        if not sections:
            warnings.append(f"line {number}: option outside any section")
            continue
        sections[-1].options.append((key.strip().lower(), value.strip()))


def _build(sections: list[_Section], warnings: list[str]) -> SipConf:
    templates: dict[str, _Section] = {}
    for section in sections:
        if section.template:
            templates[section.name] = section

    def expand(section: _Section, seen: frozenset[str]) -> list[tuple[str, str]]:
        options: list[tuple[str, str]] = []
        for parent in section.parents:
            template = templates.get(parent)
            if template is None or parent in seen:
                warnings.append(f"[{section.name}]: unknown template {parent!r}")
                continue
            options.extend(expand(template, seen | {parent}))
        return options + section.options

    general: list[tuple[str, str]] = []
    peers: dict[str, list[tuple[str, str]]] = {}
    for section in sections:
        if section.template:
            continue
        options = expand(section, frozenset({section.name}))
        if section.name == "general":
            general.extend(options)
        else:
            # A repeated [name] continues the same section, as in Asterisk.
            peers.setdefault(section.name, []).extend(options)
    return SipConf(SipPeer("general", tuple(general)),
                   {name: SipPeer(name, tuple(opts)) for name, opts in peers.items()},
                   tuple(warnings))


def parse_sip_conf(text: str) -> SipConf:
    sections: list[_Section] = []
    warnings: list[str] = []
    parse_into(text, sections, warnings)
    return _build(sections, warnings)


def load_sip_conf(path: str | Path) -> SipConf:
    """Read a sip.conf (``#include`` relative to it); ConfigError if it cannot be read."""
    sections: list[_Section] = []
    warnings: list[str] = []
    _read(Path(path), sections, warnings)
    return _build(sections, warnings)
