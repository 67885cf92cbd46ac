"""Asterisk ``rtp.conf`` ICE options, read as Asterisk reads them, for icerelay's ICE agent.

Asterisk users keep their configuration: :func:`load_rtp_conf` / :func:`parse_rtp_conf` read the
``[general]`` options ``icesupport``, ``stunaddr``, ``turnaddr``, ``turnport``, ``turnusername``,
``turnpassword``, ``ice_permit`` / ``ice_deny`` / ``ice_blacklist`` / ``ice_acl``,
``stun_permit`` / ``stun_deny`` / ``stun_blacklist`` / ``stun_acl``, ``rtpstart`` / ``rtpend``
and the ``[ice_host_candidates]`` section, into :class:`RtpIceSettings`, which builds the
agent's :class:`~icerelay.ice.config.AgentConfig`, its :class:`~icerelay.ice.relay.TurnServer`
list and the host addresses to gather on::

    settings = load_rtp_conf("/etc/asterisk/rtp.conf")
    if settings.icesupport:
        connection = Connection(
            controlling=True,
            config=settings.agent_config(resolve=my_resolver),  # see Resolver
            turn_servers=settings.turn_servers(resolve=my_resolver),
            local_addresses=settings.host_addresses(my_interface_addresses),
            port_range=settings.port_range,
        )

The semantics follow Asterisk's ``res_rtp_asterisk.c`` and ``main/acl.c`` (read, not copied):

- Only the *last* occurrence of a single-valued option counts (``ast_variable_retrieve``);
  option names and section names are case-insensitive; ``=`` and ``=>`` are the same.
- ``icesupport`` is true for yes/true/y/t/1/on (any case) and false for anything else; it is on
  when absent.
- ``stunaddr`` is ``host[:port]`` (port 3478 by default; an invalid port also means 3478); an IP
  literal needs no resolution; Asterisk's STUN is IPv4-only, so an IPv6 literal disables STUN.
- ``turnaddr`` is ``host[:port]`` (3478 by default), resolved to IPv4 once, at load time. Asterisk
  removed ``turnport`` in version 11, but its ICE documentation (and so many configurations)
  still use it: it is honoured when ``turnaddr`` has no port of its own, with a warning; a value
  that does not start with a number means 3478, as ``atoi`` did.
- ACL lines apply in file order to one list per purpose (ICE, STUN); each value is a comma-separated
  list of ``[!]address[/mask]`` (mask as CIDR bits or dotted/colon form; ``!`` inverts the
  rule); the *last matching* rule decides, and with no matching rule the address is allowed.
  IPv4 rules also match IPv4-mapped IPv6 addresses; IPv6 rules never match IPv4.
  ``*_blacklist`` is the deprecated spelling of ``*_deny``. ``*_acl = name`` names an ACL from
  ``acl.conf``: pass them as ``named_acls``; an unknown name makes the ACL deny everything, as in
  Asterisk. An invalid item ends its line (the items before it stay), as in Asterisk.
- The ICE ACL filters host addresses (and advertised 1:1 NAT addresses); the STUN ACL decides from
  which host bases STUN Binding requests go (RFC 5389 srflx gathering).
- ``[ice_host_candidates]``: ``local => advertised[,include_local_address]``: a host candidate on
  ``local`` is advertised as ``advertised`` (same port) instead of, or with
  ``include_local_address`` in addition to, the local address.
- ``rtpstart``/``rtpend`` (5000-31000 by default, clamped to 1024-65535; an odd start is rounded
  up; start >= end falls back to the defaults) give the UDP port range.

Everything Asterisk would log as a warning is collected in :attr:`RtpIceSettings.warnings` instead
of raising: a configuration that Asterisk loads must load here too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from icerelay.errors import ConfigError
from icerelay.ice.config import AgentConfig
from icerelay.ice.relay import TurnServer
from icerelay.numbers import leading_int, parse_port

STUN_PORT = 3478
TURN_PORT = 3478
RTP_START, RTP_END = 5000, 31000
RTP_PORT_MIN, RTP_PORT_MAX = 1024, 65535

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], str]
"""Host name -> IPv4 address text; raises OSError when the name does not resolve.

Reading rtp.conf does no I/O on the network: the caller (an I/O shell) passes its resolver, for
example ``socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]``, or one
that refuses (configurations with IP literals need none).
"""


# --- the Asterisk configuration file format ------------------------------------------------------


@dataclass
class _Section:
    name: str
    template: bool = False
    options: list[tuple[str, str]] = field(default_factory=list)


_HEADER = re.compile(r"^\[(?P<name>[^\]]*)\]\s*(?:\((?P<flags>[^)]*)\))?\s*$")


def _strip_comments(line: str, in_block: bool) -> tuple[str, bool]:
    """Remove ``;`` comments (``\\;`` is a literal semicolon) and ``;-- ... --;`` blocks."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("--;", i)
            if end < 0:
                return "".join(out), True
            i = end + 3
            in_block = False
            continue
        char = line[i]
        if char == "\\" and line.startswith(";", i + 1):
            out.append(";")
            i += 2
            continue
        if char == ";":
            if line.startswith(";--", i) and not line.startswith(";---", i):
                in_block = True
                i += 3
                continue
            break
        out.append(char)
        i += 1
    return "".join(out), in_block


def _read_sections(
    text: str, warnings: list[str], base_dir: Path | None, depth: int = 0
) -> list[_Section]:
    """Sections in file order, with ``#include`` expanded when the file's directory is known."""
    sections: list[_Section] = []
    current: _Section | None = None
    in_block = False
    for number, raw in enumerate(text.splitlines(), 1):
        line, in_block = _strip_comments(raw, in_block)
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            directive, _, argument = line[1:].partition(" ")
            argument = argument.strip().strip('"<>')
            if (
                directive.lower() in ("include", "tryinclude")
                and base_dir is not None
                and depth < 8
            ):
                path = Path(argument) if Path(argument).is_absolute() else base_dir / argument
                try:
                    included = path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    if directive.lower() == "include":
                        warnings.append(f"line {number}: cannot read included file {path}")
                    continue
                more = _read_sections(included, warnings, path.parent, depth + 1)
                # An included file without a header continues the current section.
                if more and more[0].name == "" and current is not None:
                    current.options.extend(more[0].options)
                    more = more[1:]
                sections.extend(more)
                if more:
                    current = more[-1]
            else:
                warnings.append(f"line {number}: directive #{directive} ignored")
            continue
        header = _HEADER.match(line)
        if header is not None:
            flags = [f.strip() for f in (header.group("flags") or "").split(",") if f.strip()]
            name = header.group("name").strip()
            if "+" in flags:
                # [name](+) adds to the section defined earlier.
                existing = _find_section(sections, name)
                if existing is not None:
                    current = existing
                    continue
            current = _Section(name, template="!" in flags)
            for parent in flags:
                if parent in ("!", "+"):
                    continue
                template = _find_section(sections, parent, templates=True)
                if template is None:
                    warnings.append(f"line {number}: unknown template {parent!r}")
                else:
                    # Inherited options come first, so the section's own ones win (last wins).
                    current.options.extend(template.options)
            sections.append(current)
            continue
        name, separator, value = line.partition("=")
        if not separator:
            warnings.append(f"line {number}: no '=' in {line!r}")
            continue
        if value.startswith(">"):
            value = value[1:]  # "name => value" is the same as "name = value"
        if current is None:
            current = _Section("")
            sections.append(current)
        current.options.append((name.strip(), value.strip()))
    return sections


def _find_section(
    sections: Sequence[_Section], name: str, *, templates: bool = False
) -> _Section | None:
    for section in sections:
        if section.name.lower() == name.lower() and (templates or not section.template):
            return section
    return None


# --- ACLs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AclRule:
    """One ``[!]address[/mask]`` item: ``permit`` says what a match means."""

    network: IPNetwork
    permit: bool

    def matches(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # IPv4 rules apply to IPv4-mapped addresses
        return address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class Acl:
    """Asterisk's ACL list for one purpose: a baseline rule list plus named ACLs.

    An address is allowed when every list allows it; within a list the last matching rule
    decides and no match allows. ``invalid`` (a named ACL that does not exist) denies all.
    """

    rules: tuple[AclRule, ...] = ()
    named: tuple[tuple[str, tuple[AclRule, ...]], ...] = ()
    invalid: bool = False

    def allows(self, address: str | IPAddress) -> bool:
        """Whether ``address`` passes (``ast_apply_acl`` giving ALLOW)."""
        if self.invalid:
            return False
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        for rules in (self.rules, *(rules for _, rules in self.named)):
            allowed = True
            for rule in rules:
                if rule.matches(ip):
                    allowed = rule.permit
            if not allowed:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.rules and not self.named and not self.invalid


def parse_acl_items(value: str, permit: bool, warnings: list[str]) -> list[AclRule]:
    """The rules of one ``*_permit``/``*_deny`` value (comma-separated; an invalid item ends it)."""
    rules: list[AclRule] = []
    for raw in value.split(","):
        item = raw.strip()
        sense = permit
        if item.startswith("!"):
            sense = not permit
            item = item[1:].strip()
        address_text, slash, mask_text = item.partition("/")
        try:
            address = ipaddress.ip_address(address_text.strip("[] "))
        except ValueError:
            warnings.append(f"invalid ACL address {address_text!r}")
            return rules
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        bits: int = address.max_prefixlen
        if slash:
            mask_text = mask_text.strip()
            try:
                if "." in mask_text or ":" in mask_text:
                    mask = ipaddress.ip_address(mask_text)
                    if isinstance(mask, ipaddress.IPv6Address) and mask.ipv4_mapped is not None:
                        mask = mask.ipv4_mapped
                    if mask.version != address.version:
                        warnings.append(f"ACL address and mask families differ in {item!r}")
                        return rules
                    network = ipaddress.ip_network(f"{address}/{mask}", strict=False)
                    bits = network.prefixlen
                else:
                    bits = int(mask_text)
                    if not 0 <= bits <= address.max_prefixlen:
                        raise ValueError(mask_text)
            except ValueError:
                warnings.append(f"invalid ACL netmask {mask_text!r}")
                return rules
        # Asterisk masks the address when it reads the rule, so 10.1.2.3/8 means 10.0.0.0/8.
        network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
        rules.append(AclRule(network, sense))
    return rules


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerAddress:
    """A STUN or TURN server as configured: ``host`` may be a name, resolved when used."""

    host: str
    port: int


@dataclass(frozen=True)
class HostCandidateMapping:
    """One ``[ice_host_candidates]`` line: 1:1 NAT from ``local`` to ``advertised``."""

    local: str
    advertised: str
    include_local: bool = False


@dataclass(frozen=True)
class RtpIceSettings:
    """The ICE part of an Asterisk rtp.conf; see the module documentation."""

    icesupport: bool = True
    stun_server: ServerAddress | None = None
    turn_server: ServerAddress | None = None
    turn_username: str = ""
    turn_password: str = ""
    ice_acl: Acl = Acl()
    stun_acl: Acl = Acl()
    host_candidates: tuple[HostCandidateMapping, ...] = ()
    port_range: tuple[int, int] = (RTP_START, RTP_END)
    warnings: tuple[str, ...] = ()

    def host_addresses(self, addresses: Iterable[str]) -> list[str]:
        """The interface addresses ICE may use: those the ICE ACL allows (order kept).

        An address that a mapping advertises under another IP stays here even when the ACL
        denies the local address itself: the socket is still needed to send from.
        """
        kept: list[str] = []
        for address in addresses:
            if self.advertised_hosts(address) and address not in kept:
                kept.append(address)
        return kept

    def advertised_hosts(self, local: str) -> list[str]:
        """The host candidate IPs to advertise for an interface address, as Asterisk does.

        With a matching ``[ice_host_candidates]`` line: the advertised address (if the ICE ACL
        allows it), then the local one only with ``include_local_address``; without one, the
        local address. The ICE ACL removes denied addresses.
        """
        ip = ipaddress.ip_address(local)
        result: list[str] = []
        include_local = True
        for mapping in self.host_candidates:
            if ipaddress.ip_address(mapping.local) == ip:
                if self.ice_acl.allows(mapping.advertised):
                    result.append(mapping.advertised)
                include_local = mapping.include_local
                break  # the first matching line wins
        if include_local and self.ice_acl.allows(ip):
            result.append(str(ip))
        return result

    def host_mappings(self) -> tuple[tuple[str, str, bool], ...]:
        """The 1:1 NAT table for ``AgentConfig.host_mappings``, ICE ACL applied.

        ``(local, advertised, include_local)``, the first line per local address only (Asterisk
        stops at the first match). A denied advertised address drops the mapping (the local
        address is then announced as itself, if allowed); a denied local address is not
        included. Local addresses with nothing left to announce are removed by
        :meth:`host_addresses`.
        """
        table: list[tuple[str, str, bool]] = []
        seen: set[str] = set()
        for mapping in self.host_candidates:
            local = str(ipaddress.ip_address(mapping.local))
            if local in seen:
                continue
            seen.add(local)
            include_local = mapping.include_local and self.ice_acl.allows(local)
            if self.ice_acl.allows(mapping.advertised):
                table.append((local, mapping.advertised, include_local))
        return tuple(table)

    def stun_allowed(self, base: str) -> bool:
        """Whether a STUN Binding request may be sent from this host base (the STUN ACL)."""
        return self.stun_acl.allows(base)

    def stun_servers(self, *, resolve: Resolver) -> tuple[tuple[str, int], ...]:
        """``stunaddr`` resolved to ``(IPv4, port)``; empty when unset or unresolvable."""
        if self.stun_server is None or not self.icesupport:
            return ()
        address = _resolve(self.stun_server.host, resolve)
        return () if address is None else ((address, self.stun_server.port),)

    def turn_servers(self, *, resolve: Resolver) -> tuple[TurnServer, ...]:
        """``turnaddr`` with its credentials as the agent's TurnServer; empty when unset."""
        if self.turn_server is None or not self.icesupport:
            return ()
        address = _resolve(self.turn_server.host, resolve)
        if address is None:
            return ()
        return (
            TurnServer((address, self.turn_server.port), self.turn_username, self.turn_password),
        )

    def agent_config(self, base: AgentConfig | None = None, *, resolve: Resolver) -> AgentConfig:
        """``base`` (default AgentConfig()) with rtp.conf's STUN server (``stunaddr``), 1:1 NAT
        table (``[ice_host_candidates]``) and STUN ACL (``stun_deny``/``stun_permit``)."""
        config = base or AgentConfig()
        return replace(
            config,
            stun_servers=self.stun_servers(resolve=resolve),
            host_mappings=self.host_mappings(),
            stun_base_allowed=None if self.stun_acl.empty else self.stun_acl.allows,
        )


def _resolve(host: str, resolve: Resolver) -> str | None:
    """An IPv4 literal as it is; a name through ``resolve`` (Asterisk resolves stunaddr and
    turnaddr to A records), None when it does not resolve."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return resolve(host)
    except OSError:
        return None


# --- option readers --------------------------------------------------------------------------

_TRUE = {"yes", "true", "y", "t", "1", "on"}


def _is_true(value: str) -> bool:
    """Asterisk's ``ast_true``."""
    return value.strip().lower() in _TRUE


def _atoi(value: str) -> int:
    """C ``atoi``: the leading (signed) digits, 0 when there are none."""
    # ASCII digits only and bounded: a 5,000-digit value is no number (int() would raise).
    return leading_int(value) or 0


def _split_host_port(value: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if value.count(":") > 1:
        return value, None  # a bare IPv6 address has no port
    host, colon, port = value.partition(":")
    return host, port if colon else None


def _parse_port(text: str | None) -> int | None:
    return None if text is None else parse_port(text.strip())


def _read_stunaddr(value: str, warnings: list[str]) -> ServerAddress | None:
    if not value.strip():
        return None
    host, port_text = _split_host_port(value)
    port = _parse_port(port_text) or STUN_PORT
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not host:
            warnings.append(f"failed to parse stunaddr {value!r}")
            return None
        return ServerAddress(host, port)  # a name: resolved when used
    if ip.version == 6:
        # Asterisk copies stunaddr into an IPv4 sockaddr: an IPv6 server leaves STUN off.
        warnings.append(f"stunaddr {value!r}: STUN servers are IPv4 only (as in Asterisk)")
        return None
    return ServerAddress(str(ip), port)


def _read_turnaddr(value: str, warnings: list[str]) -> tuple[ServerAddress | None, bool]:
    """The server, and whether the port was given in ``turnaddr`` itself."""
    host, port_text = _split_host_port(value)
    if not host:
        warnings.append(f"invalid TURN server address {value!r}")
        return None, False
    try:
        if ipaddress.ip_address(host).version == 6:
            warnings.append(f"invalid TURN server address {value!r}: IPv4 only (as in Asterisk)")
            return None, False
    except ValueError:
        pass  # a host name, resolved (to IPv4) when used
    if port_text is None:
        return ServerAddress(host, TURN_PORT), False
    port = _parse_port(port_text)
    if port is None:
        warnings.append(f"turnaddr {value!r}: invalid port, using {TURN_PORT}")
        return ServerAddress(host, TURN_PORT), False
    return ServerAddress(host, port), True


def _read_host_candidate(
    local_text: str, value: str, warnings: list[str]
) -> HostCandidateMapping | None:
    def address(text: str) -> str | None:
        host, _ = _split_host_port(text)  # PARSE_PORT_IGNORE: a port is allowed and ignored
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return None

    local = address(local_text)
    if local is None:
        warnings.append(f"invalid local ICE host address {local_text!r}")
        return None
    advertised_text, comma, option = value.partition(",")
    advertised = address(advertised_text)
    if advertised is None:
        warnings.append(f"invalid advertised ICE host address {advertised_text!r}")
        return None
    # Asterisk compares the option exactly (after leading blanks); anything else means "replace".
    include_local = bool(comma) and option.strip() == "include_local_address"
    return HostCandidateMapping(local, advertised, include_local)


def parse_rtp_conf(
    text: str,
    *,
    named_acls: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
) -> RtpIceSettings:
    """Read rtp.conf text into :class:`RtpIceSettings` (never raises for bad values).

    ``named_acls`` stands in for acl.conf: ``{name: "deny=0.0.0.0/0;permit=10.0.0.0/8"}``, the
    rule lines of each named ACL in order, ``;``-separated. ``base_dir`` lets ``#include`` find
    relative files.
    """
    warnings: list[str] = []
    sections = _read_sections(text, warnings, Path(base_dir) if base_dir is not None else None)
    general = _find_section(sections, "general")
    options = general.options if general is not None else []

    def last(name: str) -> str | None:
        value: str | None = None
        for key, item in options:
            if key.lower() == name:
                value = item
        return value

    icesupport = True
    if (value := last("icesupport")) is not None:
        icesupport = _is_true(value)

    stun_server = None
    if (value := last("stunaddr")) is not None:
        stun_server = _read_stunaddr(value, warnings)

    turn_server = None
    if (value := last("turnaddr")) is not None:
        turn_server, explicit_port = _read_turnaddr(value, warnings)
        legacy_port = last("turnport")
        if legacy_port is not None:
            warnings.append("turnport is not read by Asterisk 11 and later; use turnaddr=host:port")
            port = _atoi(legacy_port)
            if turn_server is not None and not explicit_port:
                turn_server = replace(turn_server, port=port if 1 <= port <= 65535 else TURN_PORT)

    acls = {"ice": _AclBuilder(), "stun": _AclBuilder()}
    for key, value in options:
        # Every ice_*/stun_* line, in file order, as Asterisk walks [general].
        prefix, underscore, sense = key.lower().partition("_")
        if not underscore or prefix not in acls:
            continue
        if sense == "blacklist":
            warnings.append(f"{key} is deprecated; use {prefix}_deny")
            sense = "deny"
        builder = acls[prefix]
        if sense in ("permit", "deny"):
            builder.rules.extend(parse_acl_items(value, sense == "permit", warnings))
        elif sense == "acl":
            builder.add_named(prefix, value, named_acls or {}, warnings)

    host_candidates: list[HostCandidateMapping] = []
    host_section = _find_section(sections, "ice_host_candidates")
    for local_text, value in host_section.options if host_section is not None else []:
        mapping = _read_host_candidate(local_text, value, warnings)
        if mapping is not None:
            host_candidates.append(mapping)

    return RtpIceSettings(
        icesupport=icesupport,
        stun_server=stun_server,
        turn_server=turn_server,
        turn_username=last("turnusername") or "",
        turn_password=last("turnpassword") or "",
        ice_acl=acls["ice"].build(),
        stun_acl=acls["stun"].build(),
        host_candidates=tuple(host_candidates),
        port_range=_port_range(last("rtpstart"), last("rtpend"), warnings),
        warnings=tuple(warnings),
    )


@dataclass
class _AclBuilder:
    rules: list[AclRule] = field(default_factory=list)
    named: list[tuple[str, tuple[AclRule, ...]]] = field(default_factory=list)
    invalid: bool = False

    def add_named(
        self, prefix: str, value: str, named_acls: Mapping[str, str], warnings: list[str]
    ) -> None:
        for name in (n.strip() for n in value.split(",")):
            if not name or any(existing == name.lower() for existing, _ in self.named):
                continue  # Asterisk skips a name listed twice
            definition = named_acls.get(name)
            if definition is None:
                # Asterisk keeps an undefined named ACL as "invalid", which rejects everyone.
                warnings.append(f"named ACL {name!r} is not defined: the {prefix} ACL denies all")
                self.invalid = True
                continue
            self.named.append((name.lower(), tuple(_named_acl_rules(definition, warnings))))

    def build(self) -> Acl:
        return Acl(tuple(self.rules), tuple(self.named), self.invalid)


def _named_acl_rules(definition: str, warnings: list[str]) -> list[AclRule]:
    rules: list[AclRule] = []
    for line in definition.split(";"):
        sense, _, items = line.partition("=")
        sense = sense.strip().lower()
        if sense in ("permit", "deny"):
            rules.extend(parse_acl_items(items, sense == "permit", warnings))
    return rules


def _port_range(
    start_text: str | None, end_text: str | None, warnings: list[str]
) -> tuple[int, int]:
    start, end = RTP_START, RTP_END
    if start_text is not None:
        start = min(max(_atoi(start_text), RTP_PORT_MIN), RTP_PORT_MAX)
    if end_text is not None:
        end = min(max(_atoi(end_text), RTP_PORT_MIN), RTP_PORT_MAX)
    if start % 2:
        # RTP takes even ports (RTCP the next odd one): Asterisk rounds an odd start up.
        start += 1
        warnings.append(f"odd rtpstart, rounded up to {start}")
    if start >= end:
        warnings.append("unreasonable rtpstart/rtpend, using the defaults")
        start, end = RTP_START, RTP_END
    return start, end


def load_rtp_conf(
    path: str | Path, *, named_acls: Mapping[str, str] | None = None
) -> RtpIceSettings:
    """Read an rtp.conf file (``#include`` resolved relative to it). ConfigError if unreadable."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from exc
    return parse_rtp_conf(text, named_acls=named_acls, base_dir=file.parent)
