"""asyncio shells: sockets and timers around the sans-I/O engines.

- :mod:`.addresses` — socket address tuples ⇄ :class:`~icerelay.stun.Address`, socket creation.
- :mod:`.udp` — a UDP endpoint that hands each datagram to a callback.
- :mod:`.stream` — a TCP server framing STUN/ChannelData (RFC 8489 §6.2.2, RFC 8656 §12.5).
- :mod:`.loop` — event loop choice (uvloop when installed).
"""
