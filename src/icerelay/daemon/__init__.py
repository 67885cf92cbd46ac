"""The daemon: what ``icerelay serve`` composes from the engines and the I/O shells.

- :mod:`.config` — the one typed configuration model (TOML, ``ICERELAY_*`` variables, flags),
  with the ``[relay]`` section in :mod:`.relay_config`.
- :mod:`.compose` — which services ``serve`` runs, started and stopped together.
- :mod:`.stun_service` — the STUN Binding responder on UDP and TCP sockets.
- :mod:`.turn_service` — the TURN server engine on UDP, TCP and TLS sockets.
- :mod:`.relay_service` — the media relay: control protocols, session engine, data plane.
- :mod:`.accounting` — the accounting writer (SQLite or PostgreSQL) for relay session records.

Nothing below this layer imports it.
"""
