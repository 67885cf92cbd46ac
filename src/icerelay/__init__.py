"""icerelay: NAT traversal for SIP media (ICE agent, STUN/TURN server, ICE-aware media relay)."""

__version__ = "0.1.0"
