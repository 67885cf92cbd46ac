"""The ICE-aware media relay a SIP proxy drives (issue 5): MediaProxy's job, done with ICE in mind.

A proxy tells the relay about each SDP offer and answer of a call, over rtpengine's ng protocol
(:mod:`icerelay.control.ng`, UDP/TCP 127.0.0.1:2223) or OpenSIPS's mediaproxy protocol
(:mod:`icerelay.control.mediaproxy`, UNIX socket ``/run/mediaproxy/dispatcher.sock``). The relay
gives each stream a port pair facing each party, rewrites the SDP so both send to it, forwards
RTP/RTCP, and writes an accounting record when the call ends.

Modules, from the bottom up:

- :mod:`.policy` — ``ICE=`` modes and the relay-candidate priority policy (none / low / high).
- :mod:`.ports` — even RTP / odd RTCP port pairs in random order (an injected ``rng``).
- :mod:`.forwarding` — what the engine asks of a data plane (:class:`~.forwarding.Forwarding`,
  counters); the interface itself is :mod:`icerelay.dataplane.interface`.
- :mod:`.records`, :mod:`.events`, :mod:`.options` — end reasons and accounting records, the
  engine's events, the relay's settings and per-request options.
- :mod:`.plans` — the structured core's values: :class:`~.plans.StreamOffer` (what a party says
  of a stream) and :class:`~.plans.SessionPlan` (where each stream goes via the relay).
- :mod:`.candidates` — the relay's own ICE candidates.
- :mod:`.rewrite` — the SDP edge: an SDP described as stream offers, and rewritten from a plan
  (only ``c=``, the ``m=`` port, ``a=rtcp``, ICE lines and, on request, ``o=`` change; the rest
  stays byte-exact).
- :mod:`.dialogs`, :mod:`.streams` — which session a request belongs to; per-stream ports,
  addresses, rtcp-mux and ICE decisions.
- :mod:`.packets` — what a datagram on a relay port is (RTP, RTCP, ICE check, nomination, ...).
- :mod:`.latching` — the latching policy every data plane consults per packet:
  ``decide(leg, component, data, source, now)`` -> Forward | Drop | Answer.
- :mod:`.stepaside` — when ICE went around the relay, from what the relay itself saw
  (authenticated checks crossed, then its pair fell silent): pure functions the engine's timer
  runs.
- :mod:`.sessions` — the sans-I/O engine: ``update(dialog, exchange, streams, now) -> plan``,
  with ``offer``/``answer`` for SDP bodies; re-INVITEs, hold, forks, ICE success detection,
  timeouts with named reasons, accounting records.

The daemon that runs it (control listeners, worker, timers, data plane, accounting) is
:mod:`icerelay.daemon.relay_service`.

ICE, in short: when an SDP carries ICE, the relay adds itself as a ``typ relay`` candidate, so
its ``c=``/``m=`` rewrite is one of the candidates and ICE keeps working. If ICE then finds a direct
path (the controlling agent's re-INVITE names it in ``a=remote-candidates``, or the checks crossed
the relay and then its pair fell silent for ``ice_settle`` seconds), the relay frees that stream
and records ``ice-direct-path`` instead of treating the silence as a dead call. ``ICE=force``
makes the relay an ICE-lite agent and the only candidate; ``ICE=remove`` strips ICE.
"""
