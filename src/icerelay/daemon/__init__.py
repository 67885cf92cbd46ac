"""The daemon: what ``icerelay serve`` composes from the engines and the I/O shells.

- :mod:`.config` — the one typed configuration model (TOML, ``ICERELAY_*`` variables, flags),
  with the ``[relay]`` section in :mod:`.relay_config`.
- :mod:`.compose` — which services ``serve`` runs, started and stopped together, and the
  :class:`~.compose.Daemon` that reloads (SIGHUP) and drains (SIGUSR1) them.
- :mod:`.stun_service` — the STUN Binding responder on UDP and TCP sockets.
- :mod:`.turn_service` — the TURN server engine on UDP, TCP and TLS sockets.
- :mod:`.relay_service` — the media relay: control protocols, session engine, data plane.
- :mod:`.journal` — the relay's durable local journal (records before they are acknowledged,
  checkpoints of live calls).
- :mod:`.accounting` — delivery of journalled records to SQLite or PostgreSQL, exactly once.

Nothing below this layer imports it.
"""
