"""Step-aside: when the relay leaves an ICE call, decided from what the relay itself saw.

When both parties of a stream do ICE, the relay is only one of their candidates (the one its
``c=``/``m=`` rewrite and its ``typ relay`` candidate stand for). ICE may select a pair that
avoids it; then the relay's ports carry nothing and should go back to the pool. Signalling says
so only sometimes: RFC 8839 §4.2.5's re-offer with ``a=remote-candidates`` is optional in
practice (baresip re-offers only when its default candidate changed, and then lists every remote
candidate). So the relay watches its own ports, through the data plane's
:class:`~icerelay.relay.forwarding.LegCounters`:

1. **Checks crossed**: authenticated connectivity checks (their MESSAGE-INTEGRITY verified with
   the credentials of the two SDPs, so a stranger's packets move nothing) went through the relay.
   Both parties run ICE end to end through it, and the relay pair is being tried.
2. **Then silence on the relay pair**: for ``settle`` seconds neither media nor a check (consent
   freshness, RFC 7675, runs on the selected pair only) used the relay. An agent that selected the
   relay pair sends media on it every few tens of milliseconds and consent checks every 4-6 s; one
   that selected another pair stops using the relay as soon as ICE completes (RFC 8445 §8.3:
   the other pairs' checks stop). So ``settle`` (3 s) after the last use, ICE went around.

While every stream is on hold (``a=inactive`` both ways is possible) a selected relay pair may
carry only consent checks, up to 6 s apart: the window is then stretched to cover them.

Silence can also mean that ICE is still running elsewhere in the checklist: baresip 1.0 (libre)
checks one pair at a time, each failing pair taking about 2.2 s of retransmissions, component
1's pairs first, then component 2's. Its checks on the relay pair of component 1 can be 4-5 s
apart from those of component 2, and stepping aside in that gap breaks a call that ends up
needing the relay. So while a stream has two components and the relay saw traffic on only one
of its two ports, the window is ``checking_wait`` (10 s) instead: longer, and not premature for
the agents measured (baresip 1.0, icerelay's own).

Once the relay pair is known to be the selected one -- a nomination (USE-CANDIDATE) crossed the
relay and media kept crossing it for ``settle`` seconds after that -- silence no longer means
that ICE went elsewhere (ICE changes a selected pair only by an ICE restart, which comes with
an offer): it is a muted phone or silence suppression, and the media timeout deals with a dead
call. The timer then stops looking at the stream.

These are pure functions of counters and times; :mod:`.sessions` runs them from its timer and
from re-offers, and keeps the books (ports, records).
"""

from __future__ import annotations

from enum import StrEnum

from icerelay.relay.forwarding import ForwardingCounters, LegCounters

__all__ = [
    "CHECKING_WAIT",
    "CONSENT_INTERVAL",
    "DEFAULT_SETTLE",
    "Path",
    "checks_crossed",
    "last_relay_use",
    "next_check",
    "one_component_seen",
    "paths",
    "relay_in_use",
    "relay_selected",
    "should_step_aside",
    "window",
]

#: Seconds without use of the relay pair after which ICE is taken to have gone around it.
DEFAULT_SETTLE = 3.0

#: RFC 7675 §5.1: consent checks every 5 s, randomised to 4-6 s; the longest gap between two.
CONSENT_INTERVAL = 6.0


class Path(StrEnum):
    """What the relay carried of one direction of a stream (media *from* one party)."""

    #: The relay carried this party's media up to the stream's last activity.
    RELAYED = "relayed"
    #: This party's ICE checks crossed the relay but its media took another path (or the relay
    #: stepped aside).
    DIRECT = "direct"
    #: The relay saw neither media nor ICE checks from this party.
    NONE = "none"


def checks_crossed(counters: ForwardingCounters | None) -> bool:
    """True if authenticated ICE checks from either party went through the relay."""
    if counters is None:
        return False
    return counters.a.checks_authenticated > 0 or counters.b.checks_authenticated > 0


def _leg_use(leg: LegCounters) -> float | None:
    times = [t for t in (leg.last_check, leg.last_media) if t is not None]
    return max(times) if times else None


def last_relay_use(counters: ForwardingCounters) -> float | None:
    """The last time the relay pair was used: an authenticated check or media, either way."""
    times = [t for t in (_leg_use(counters.a), _leg_use(counters.b)) if t is not None]
    return max(times) if times else None


#: Seconds of silence needed while a two-component stream was seen on one relay port only.
CHECKING_WAIT = 10.0


#: How often a stream whose relay pair is selected is looked at again (cheap, and a later
#: request re-arms the timer anyway).
SELECTED_RECHECK = 30.0


def relay_selected(counters: ForwardingCounters, settle: float) -> bool:
    """True if the relay pair is the selected one: a nomination crossed the relay and media
    went on crossing it for ``settle`` seconds after the last nomination."""
    nominations = [
        t for t in (counters.a.last_nomination, counters.b.last_nomination) if t is not None
    ]
    media = [t for t in (counters.a.last_media, counters.b.last_media) if t is not None]
    return bool(nominations and media) and max(media) >= max(nominations) + settle


def one_component_seen(counters: ForwardingCounters) -> bool:
    """True if traffic (checks or media) reached only one of the relay's two ports (RTP, RTCP)
    of this stream, from either party: the latched addresses say which ports heard anything."""
    rtp = counters.a.latched_rtp is not None or counters.b.latched_rtp is not None
    rtcp = counters.a.latched_rtcp is not None or counters.b.latched_rtcp is not None
    return rtp != rtcp


def window(
    settle: float,
    *,
    held: bool,
    checking: bool = False,
    checking_wait: float = CHECKING_WAIT,
) -> float:
    """How long the relay pair must stay unused before the relay steps aside; ``checking``: ICE
    may still be working through the other component's pairs (see the module docstring)."""
    base = max(settle, CONSENT_INTERVAL) if held else settle
    return max(base, checking_wait) if checking else base


def _window(
    counters: ForwardingCounters, settle: float, held: bool, components: int, checking_wait: float
) -> float:
    checking = components == 2 and one_component_seen(counters)
    return window(settle, held=held, checking=checking, checking_wait=checking_wait)


def should_step_aside(
    counters: ForwardingCounters | None,
    now: float,
    settle: float,
    *,
    held: bool = False,
    components: int = 1,
    checking_wait: float = CHECKING_WAIT,
) -> bool:
    """Checks crossed the relay, and for the window since then the relay pair was not used.

    ``components``: ICE components of the stream (2 unless both parties multiplex RTCP)."""
    if counters is None or not checks_crossed(counters) or relay_selected(counters, settle):
        return False
    last = last_relay_use(counters)
    wait = _window(counters, settle, held, components, checking_wait)
    # The same sum as next_check's deadline, so that the timer it sets finds the window over.
    return last is not None and now >= last + wait


def next_check(
    counters: ForwardingCounters | None,
    now: float,
    settle: float,
    *,
    held: bool = False,
    components: int = 1,
    checking_wait: float = CHECKING_WAIT,
) -> float:
    """When to look at a stream again (after ``now``): at the end of the current window, or
    ``settle`` from now while no check has crossed yet (the relay candidate may be tried late)."""
    wait = window(settle, held=held)
    if counters is not None:
        wait = _window(counters, settle, held, components, checking_wait)
    if counters is None or not checks_crossed(counters):
        return now + wait
    if relay_selected(counters, settle):
        return now + SELECTED_RECHECK
    last = last_relay_use(counters)
    due = (last if last is not None else now) + wait
    # Never in the past: a stream that is not to step aside now is looked at again later.
    return due if due > now else now + wait


def relay_in_use(counters: ForwardingCounters | None, now: float, settle: float) -> bool | None:
    """Whether the relay's observations say the relay pair is the one in use.

    None: the relay saw no authenticated checks, so it cannot tell (signalling decides alone).
    True: a nomination (USE-CANDIDATE) crossed the relay and the relay pair carried media or
    checks within ``settle`` of ``now``. False otherwise: ICE selected another pair.
    """
    if counters is None or not checks_crossed(counters):
        return None
    if counters.a.last_nomination is None and counters.b.last_nomination is None:
        return False
    last = last_relay_use(counters)
    return last is not None and now - last < settle


def paths(counters: ForwardingCounters, settle: float, *, stepped_aside: bool) -> tuple[Path, Path]:
    """Per direction (from the caller, from the callee), what the relay carried.

    A direction is relayed when its media reached the relay within ``settle`` of the stream's
    last activity through the relay; direct when its checks crossed the relay but its media did
    not follow (ICE chose another path for it), or when the relay stepped aside.
    """
    if stepped_aside:
        return Path.DIRECT, Path.DIRECT
    last = last_relay_use(counters)
    result = []
    for leg in (counters.a, counters.b):
        if leg.last_media is not None and last is not None and last - leg.last_media < settle:
            result.append(Path.RELAYED)
        elif leg.checks_authenticated > 0:
            result.append(Path.DIRECT)
        elif leg.packets > 0:
            # Media without ICE (or counters without times): the relay did carry it.
            result.append(Path.RELAYED)
        else:
            result.append(Path.NONE)
    return result[0], result[1]
