"""A blocking TURN client over UDP for the offload tests (used in threads and, through
``turn_offload_agent``, inside network namespaces)."""

from __future__ import annotations

import os
import socket
from typing import Any

from icerelay.stun import AttributeType, Message, MessageClass, Method, decode_message
from icerelay.stun.credentials import long_term_key

A = AttributeType
USER, PASSWORD, REALM = "offload", "through-the-kernel", "ebpf.test"
KEY = long_term_key(USER, REALM, PASSWORD)


class Client:
    """A blocking TURN client over UDP, enough for these tests (run in a thread)."""

    def __init__(self, server: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(2)
        self.sock.connect(server)
        self.nonce: str | None = None

    def request(self, method: Method, **attributes: Any) -> Message:
        message = Message(method, MessageClass.REQUEST, os.urandom(12))
        for name, value in attributes.items():
            message.add(getattr(A, name), value)
        if self.nonce is not None:
            message.add(A.USERNAME, USER)
            message.add(A.REALM, REALM)
            message.add(A.NONCE, self.nonce)
            self.sock.send(message.encode(KEY))
        else:
            self.sock.send(message.encode())
        while True:
            answer = decode_message(self.sock.recv(4096))
            if answer.transaction_id == message.transaction_id:
                break
        error = answer.get(A.ERROR_CODE)
        if error is not None and error.code == 401 and self.nonce is None:
            self.nonce = answer.get(A.NONCE)
            return self.request(method, **attributes)
        assert error is None, error
        return answer

    def allocate(self, family: int) -> tuple[str, int]:
        extra = {"REQUESTED_ADDRESS_FAMILY": 2} if family == 6 else {}
        answer = self.request(Method.ALLOCATE, REQUESTED_TRANSPORT=17, **extra)
        relayed = answer.get(A.XOR_RELAYED_ADDRESS)
        assert relayed is not None
        return relayed.host, relayed.port

    def recv(self, timeout: float = 1.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65535)
        except TimeoutError:
            return None
