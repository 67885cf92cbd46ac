"""The ICE-aware media relay a SIP proxy drives: port pool, sessions, SDP rewriting, ICE policy."""
