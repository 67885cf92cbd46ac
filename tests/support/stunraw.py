"""A deliberately tiny Binding request/response codec for test helpers.

Readiness checks (is coturn up? is ``icerelay serve`` up?) must not depend on the STUN code they
help to test, so this module builds a Binding request by hand and pulls XOR-MAPPED-ADDRESS out of
a response with nothing but :mod:`struct`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

    from tests.support.netns import Namespace

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020


def binding_request(transaction_id: bytes | None = None) -> bytes:
    """A 20-byte Binding request with no attributes."""
    tid = transaction_id or os.urandom(12)
    return struct.pack("!HHI12s", BINDING_REQUEST, 0, MAGIC_COOKIE, tid)


def xor_mapped_address(response: bytes) -> tuple[str, int] | None:
    """XOR-MAPPED-ADDRESS of a Binding success response, or None."""
    if len(response) < 20:
        return None
    kind, length, cookie = struct.unpack_from("!HHI", response)
    if kind != BINDING_SUCCESS or cookie != MAGIC_COOKIE:
        return None
    tid = response[8:20]
    offset, end = 20, min(len(response), 20 + length)
    while offset + 4 <= end:
        attr, alen = struct.unpack_from("!HH", response, offset)
        value = response[offset + 4 : offset + 4 + alen]
        if attr == XOR_MAPPED_ADDRESS and len(value) >= 8:
            family = value[1]
            port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
            key = struct.pack("!I", MAGIC_COOKIE) + tid
            raw = bytes(a ^ b for a, b in zip(value[4:], key, strict=False))
            if family == 1:
                return str(ipaddress.IPv4Address(raw[:4])), port
            return str(ipaddress.IPv6Address(raw[:16])), port
        offset += 4 + ((alen + 3) & ~3)
    return None


def udp_binding(host: str, port: int, timeout: float = 0.5) -> tuple[str, int] | None:
    """Send one Binding request over UDP and return the mapped address, or None on timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(binding_request(), (host, port))
            data = sock.recv(2048)
        except OSError:
            return None
    return xor_mapped_address(data)


def wait_for_udp_binding(host: str, port: int, timeout: float = 10.0) -> tuple[str, int]:
    """Poll until a STUN server answers a Binding request over UDP; raise TimeoutError if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mapped = udp_binding(host, port, timeout=0.2)
        if mapped is not None:
            return mapped
        time.sleep(0.05)
    raise TimeoutError(f"no STUN Binding response from {host}:{port} within {timeout} s")


# Source of the same poll, for running inside a network namespace (see netns.Namespace.python).
WAIT_SNIPPET = """
import socket, struct, sys, time, os
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(struct.pack('!HHI12s', 1, 0, 0x2112A442, os.urandom(12)), (host, port))
            if s.recv(2048)[:2] == b'\\x01\\x01':
                sys.exit(0)
        except OSError:
            time.sleep(0.05)
sys.exit(1)
"""


def wait_until_answers(
    process: subprocess.Popen[Any],
    host: str,
    port: int,
    timeout: float,
    namespace: Namespace | None = None,
) -> bool:
    """Whether the server ``process`` started answers a Binding over UDP within ``timeout`` s.

    Inside ``namespace`` the poll is :data:`WAIT_SNIPPET` run there; outside it, the poll also
    gives up as soon as the process exits.
    """
    if namespace is not None:
        result = namespace.python(
            WAIT_SNIPPET, host, str(port), str(timeout), check=False, timeout=timeout + 5
        )
        return result.returncode == 0
    from tests.support.process import wait_until

    return wait_until(process, lambda: udp_binding(host, port, timeout=0.2) is not None, timeout)
