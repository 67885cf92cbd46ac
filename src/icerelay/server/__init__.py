"""icerelay's servers: the STUN Binding engine and service, and ``serve`` composition.

- :mod:`.binding` — sans-I/O Binding engine (RFC 8489, RFC 5780, RFC 3489 compatibility).
- :mod:`.counters`, :mod:`.ratelimit` — drop counters and rate-limited logging of bad input.
- :mod:`.stun_service` — the engine on asyncio sockets (UDP and TCP, IPv4 and IPv6).
- :mod:`.compose` — which services ``icerelay serve`` runs, started and stopped together.
"""
