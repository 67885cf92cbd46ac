"""Control protocols a SIP proxy uses to drive the media relay: rtpengine's ng, MediaProxy's.

Each protocol is a package of the same shape (sans-I/O; the daemon owns sockets and the clock):
``commands`` (the typed commands parsed from a request, and the replies), ``protocol`` (one
message in, a command or an immediate answer out; cookies, encoding, the reply cache, counters,
errors as ``ControlError(status=, counter=)`` answered in one place), ``framing`` (splitting a
byte stream into messages), ``handler`` (runs the commands on the relay's SessionEngine), and an
``__init__`` that re-exports the public names.
"""
