"""Network namespaces for tests: hosts, a real Linux NAT, and a 'public' network.

Building blocks:

- :class:`Lab` — owns every namespace it creates (names unique per process and call, so parallel
  runs never collide) and deletes them all on :meth:`Lab.close`, also when the test failed. Use it
  as a context manager or through the ``netns_lab`` fixture.
- :class:`Namespace` — one namespace: :meth:`~Namespace.run` a command, :meth:`~Namespace.popen` a
  long-running one (killed when the lab closes), :meth:`~Namespace.python` a snippet.
- :func:`nat_lab` — the usual picture, ready made::

      client 10.0.0.2 ──(inside)── nat 10.0.0.1 | 203.0.113.1 ──(public)── server 203.0.113.10
                                                                               203.0.113.11

  The NAT box masquerades with nftables: ``cone`` (``masquerade``: endpoint-independent mapping,
  address-and-port-dependent filtering, i.e. port-restricted cone) or ``symmetric``
  (``masquerade random,fully-random``: address-and-port-dependent mapping). The public namespace has
  a default route into a dummy device, so traffic to unknown addresses is silently dropped rather
  than failing with ENETUNREACH (coturn drops a whole allocation on that error).

Everything needs root, ``ip`` and ``nft``; :func:`unavailable_reason` says what is missing so tests
can skip with that reason.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

NatKind = Literal["cone", "symmetric"]

_counter = itertools.count()


@functools.cache
def unavailable_reason() -> str | None:
    """Why namespaces can't be built here (None when they can). Checked once per process by
    really creating a namespace and loading nftables in it: root alone is not enough in a
    container without CAP_SYS_ADMIN or without the nf_tables module."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool!r} not installed (iproute2/nftables; run scripts/install-debian-deps)"
    name = f"icrcheck{os.getpid()}"
    created = _ip("netns", "add", name, check=False)
    if created.returncode != 0:
        return f"cannot create network namespaces: {created.stderr.strip()}"
    try:
        nft = subprocess.run(
            ["ip", "netns", "exec", name, "nft", "add", "table", "ip", "check"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if nft.returncode != 0:
            return f"nftables unusable in a namespace: {nft.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


class NamespaceCommandError(subprocess.CalledProcessError):
    """A command in a namespace failed; the message includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


@dataclass
class Namespace:
    """One network namespace created by a :class:`Lab`."""

    name: str
    lab: Lab = field(repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace, capturing text output.

        With ``check`` a non-zero exit raises ``CalledProcessError`` whose message includes stderr.
        """
        result = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and result.returncode != 0:
            raise NamespaceCommandError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def popen(self, *argv: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start a long-running command inside the namespace; the lab kills it on close."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self.command(argv), text=True, start_new_session=True, **kwargs
        )
        self.lab.processes.append(process)
        return process

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet (this interpreter, so icerelay is importable) in the namespace."""
        return self.run(sys.executable, "-c", code, *args, check=check, timeout=timeout)

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) in this namespace."""
        self.run("nft", "-f", "-", input=ruleset)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def addresses(self) -> str:
        """``ip -brief address`` output, for failure messages."""
        return self.run("ip", "-brief", "address", check=False).stdout


class Lab:
    """A set of namespaces (and processes in them) that are torn down together."""

    def __init__(self, prefix: str = "icr") -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.prefix = f"{prefix}{os.getpid()}x{next(_counter)}"
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[str]] = []
        self._links = itertools.count()

    def namespace(self, role: str) -> Namespace:
        """Create a namespace named ``<prefix>-<role>`` with loopback up."""
        ns = Namespace(f"{self.prefix}-{role}", self)
        _ip("netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def link(
        self,
        a: Namespace,
        b: Namespace,
        a_addresses: Sequence[str],
        b_addresses: Sequence[str],
    ) -> tuple[str, str]:
        """A veth pair between ``a`` and ``b`` with the given ``addr/prefix`` on each end.

        Returns the interface names (in ``a``, in ``b``). Both ends are created directly inside
        their namespaces, so the names never clash with anything in the root namespace.
        """
        n = next(self._links)
        a_if, b_if = f"veth{n}a", f"veth{n}b"
        _ip("link", "add", a_if, "netns", a.name, "type", "veth",
            "peer", "name", b_if, "netns", b.name)  # fmt: skip
        for ns, ifname, addresses in ((a, a_if, a_addresses), (b, b_if, b_addresses)):
            for address in addresses:
                # nodad: IPv6 duplicate address detection would delay usability by ~2 s.
                extra = ["nodad"] if ":" in address else []
                ns.run("ip", "address", "add", address, "dev", ifname, *extra)
            ns.run("ip", "link", "set", ifname, "up")
        return a_if, b_if

    def close(self) -> None:
        """Kill started processes, delete namespaces. Safe to call twice; never raises."""
        for process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired, ValueError, OSError):
                process.communicate(timeout=5)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns.name, check=False)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class NatLab:
    """The namespaces and addresses of :func:`nat_lab`."""

    lab: Lab
    client: Namespace
    nat: Namespace
    public: Namespace
    client_address: str
    nat_inside: str
    nat_outside: str
    server_addresses: tuple[str, str]
    kind: NatKind | None


CLIENT_NET = "10.0.0"
PUBLIC_NET = "203.0.113"


def nat_ruleset(outside_interface: str, kind: NatKind) -> str:
    """nftables source NAT on ``outside_interface``: cone or symmetric (see module docstring)."""
    flags = " random,fully-random" if kind == "symmetric" else ""
    return f"""
table ip icerelay_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{outside_interface}" masquerade{flags}
    }}
}}
"""


def build_nat_lab(lab: Lab, kind: NatKind | None) -> NatLab:
    """Build client / nat / public namespaces in ``lab``. ``kind=None``: plain router, no NAT."""
    client, nat, public = lab.namespace("client"), lab.namespace("nat"), lab.namespace("public")
    lab.link(client, nat, [f"{CLIENT_NET}.2/24"], [f"{CLIENT_NET}.1/24"])
    outside, _ = lab.link(
        nat, public, [f"{PUBLIC_NET}.1/24"], [f"{PUBLIC_NET}.10/24", f"{PUBLIC_NET}.11/24"]
    )
    client.run("ip", "route", "add", "default", "via", f"{CLIENT_NET}.1")
    nat.sysctl("net.ipv4.ip_forward", "1")
    _add_silent_default_route(public)
    if kind is None:
        public.run("ip", "route", "add", f"{CLIENT_NET}.0/24", "via", f"{PUBLIC_NET}.1")
    else:
        nat.nft(nat_ruleset(outside, kind))
    return NatLab(
        lab=lab,
        client=client,
        nat=nat,
        public=public,
        client_address=f"{CLIENT_NET}.2",
        nat_inside=f"{CLIENT_NET}.1",
        nat_outside=f"{PUBLIC_NET}.1",
        server_addresses=(f"{PUBLIC_NET}.10", f"{PUBLIC_NET}.11"),
        kind=kind,
    )


def _add_silent_default_route(ns: Namespace) -> None:
    """Default route whose packets vanish without an error to the sender.

    The 'dummy' link type is not available everywhere (it is a module), so: a veth pair with both
    ends in ``ns``, and a permanent neighbour entry for the gateway with a MAC nobody owns. Frames
    reach the peer end, which discards them as addressed to another host.
    """
    ns.run("ip", "link", "add", "drop0", "type", "veth", "peer", "name", "drop1")
    ns.run("ip", "link", "set", "drop0", "up")
    ns.run("ip", "link", "set", "drop1", "up")
    ns.run("ip", "neigh", "add", "192.0.2.254", "lladdr", "02:00:00:00:00:fe", "dev", "drop0",
           "nud", "permanent")  # fmt: skip
    ns.run("ip", "route", "add", "default", "via", "192.0.2.254", "dev", "drop0", "onlink")


@contextmanager
def nat_lab(kind: NatKind | None = "cone") -> Iterator[NatLab]:
    """Context manager: a fresh :class:`NatLab`, always torn down."""
    with Lab() as lab:
        yield build_nat_lab(lab, kind)
