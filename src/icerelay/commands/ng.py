"""``icerelay ng FILE|-``: send one raw ng command and print the reply, to debug a proxy's setup.

The file holds the command's dictionary, in bencode (what proxies send) or JSON (rtpengine's
JSON form; anything starting with ``{``); the cookie is added here. It goes to the relay as it
is, so the relay's own parsing and error messages are what you see. The reply is printed as
JSON with strings decoded (``--raw``: the bytes as received, cookie included). Works against
icerelay or rtpengine alike. Exit codes: 0 an answer came (even ``result: error``), 1 no answer,
2 bad usage.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
from typing import IO

import click

from icerelay import bencode
from icerelay.control.ng.protocol import NG_PORT
from icerelay.net import split_host_port

__all__ = ["ng", "reply_to_json"]


def reply_to_json(value: bencode.BencodeValue) -> object:
    """A decoded bencode value with byte strings as text (undecodable bytes escaped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, list):
        return [reply_to_json(item) for item in value]
    if isinstance(value, dict):
        return {
            key.decode("utf-8", "backslashreplace"): reply_to_json(item)
            for key, item in value.items()
        }
    return value


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"icerelay ng: {message}", err=True)
    sys.exit(code)


def _exchange_udp(address: tuple[str, int], message: bytes, timeout: float) -> bytes:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message, address)
        cookie = message.partition(b" ")[0]
        while True:
            data, _ = sock.recvfrom(65536)
            if data.partition(b" ")[0] == cookie:
                return data


def _exchange_tcp(address: tuple[str, int], message: bytes, timeout: float) -> bytes:
    # ng over TCP: netstring-like framing "LENGTH:MESSAGE", as rtpengine and icerelay take it.
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(b"%d:%s" % (len(message), message))
        buffer = b""
        while b":" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the reply")
            buffer += chunk
        header, _, rest = buffer.partition(b":")
        length = int(header)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in the middle of the reply")
            rest += chunk
        return rest[:length]


@click.command("ng")
@click.argument("source", type=click.File("rb"), metavar="FILE|-")
@click.option(
    "--address",
    "-a",
    default=f"127.0.0.1:{NG_PORT}",
    show_default=True,
    metavar="IP:PORT",
    help="The relay's ng address ([relay] ng_listen).",
)
@click.option("--tcp", is_flag=True, help="Over TCP (length-prefixed) instead of UDP.")
@click.option("--timeout", type=click.FloatRange(min=0.05), default=3.0, show_default=True)
@click.option("--raw", is_flag=True, help="Print the reply as received (cookie included).")
def ng(source: IO[bytes], address: str, tcp: bool, timeout: float, raw: bool) -> None:
    """Send the ng command in FILE (bencode or JSON; - for stdin) and print the reply."""
    body = source.read().strip()
    if not body:
        _fail("empty command", 2)
    is_json = body.startswith(b"{")
    try:
        if is_json:
            json.loads(body)
        else:
            bencode.decode(body)
    except (ValueError, bencode.BencodeError) as error:
        kind = "JSON" if is_json else "bencode"
        _fail(f"the command is not valid {kind}: {error}", 2)
    try:
        host, port = split_host_port(address, NG_PORT)
    except ValueError as error:
        _fail(f"bad address: {error}", 2)
        return
    cookie = secrets.token_hex(6).encode()
    message = cookie + b" " + body
    try:
        exchange = _exchange_tcp if tcp else _exchange_udp
        data = exchange((host, port), message, timeout)
    except TimeoutError:
        _fail(f"no answer from {address} within {timeout:g} s")
        return
    except (OSError, ValueError) as error:
        _fail(f"{address}: {error}")
        return
    if raw:
        sys.stdout.buffer.write(data + b"\n")
        return
    payload = data.partition(b" ")[2]
    try:
        if payload.lstrip().startswith(b"{"):
            reply: object = json.loads(payload)
        else:
            reply = reply_to_json(bencode.decode(payload))
    except (ValueError, bencode.BencodeError):
        _fail(f"undecodable reply: {data[:200]!r}")
        return
    click.echo(json.dumps(reply, indent=2, ensure_ascii=False))
