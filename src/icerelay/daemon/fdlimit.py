"""Raising the open-file limit a server needs, shared by the TURN server and the media relay.

Every relayed address is a socket: a TURN allocation holds one (two when dual-stack), a relay
call two per stream (RTP and RTCP), on top of the control connections. The usual soft limit of
1024 descriptors would make the server fail at a few hundred calls (EMFILE) long before its
configured quotas, so each service raises its soft limit towards what its quotas can use, up to
the hard limit, at start.
"""

from __future__ import annotations

import logging

__all__ = ["raise_fd_limit"]


def raise_fd_limit(needed: int, logger: logging.Logger, service: str) -> int | None:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (never above the hard limit, never
    lowering it). Returns the soft limit now in force (None: unlimited or unknown); logs a
    warning naming ``service`` when it stays below ``needed``."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        infinity = resource.RLIM_INFINITY
        target = needed if hard == infinity else min(needed, hard)
        if soft != infinity and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ValueError, OSError):
        return None
    if soft == infinity:
        return None
    if soft < needed:
        logger.warning(
            "%s open-file limit %d is below the %d its limits may need; raise `ulimit -n`",
            service,
            soft,
            needed,
        )
    return int(soft)
