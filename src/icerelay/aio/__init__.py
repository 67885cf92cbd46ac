"""asyncio shells: sockets and timers around the sans-I/O engines.

- :mod:`.driver` — :class:`~.driver.EngineDriver`, the one driver of every sans-I/O engine.
- :mod:`.ice` — ICE ``Connection`` over real sockets; :mod:`.aioice` — aioice's API on top of it.
- :mod:`.turn_client` — ``TurnClient``/``create_turn_allocation`` over UDP, TCP or TLS.
- :mod:`.probe` — ``icerelay stun-probe`` on real sockets.
- :mod:`.addresses` — socket address tuples ⇄ :class:`~icerelay.stun.Address`, socket creation.
- :mod:`.udp` — a UDP endpoint that hands each datagram to a callback.
- :mod:`.poller` — many hot UDP sockets read through one epoll set, in rounds (TURN, relay).
- :mod:`.stream` — a TCP server framing STUN/ChannelData (RFC 8489 §6.2.2, RFC 8656 §12.5).
- :mod:`.loop` — event loop choice (uvloop when installed).
"""
