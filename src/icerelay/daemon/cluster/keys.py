"""Where the cluster keeps what in Redis: one place for every key name.

Layout (``P`` is ``[cluster] key_prefix``, ``I`` an instance name, ``C`` a Call-ID)::

    P:instances          SET     names of the instances that joined (and were not adopted)
    P:alive:I            STRING  I's heartbeat, JSON {ng, calls, time}; expires (PX) when I stops
    P:info:I             STRING  I's relay settings (JSON), kept after I died: an adopter binds
                                 I's addresses and ports with them
    P:calls:I            HASH    C -> JSON call document (the sessions' snapshots, the origin
                                 whose addresses and ports the call uses, the journal position)
    P:owner              HASH    C -> the instance serving C (any instance answers for any call)
    P:adopt:I            STRING  the lock (SET NX PX) that lets exactly one survivor adopt I
    P:adopted:I          HASH    C -> adopter: calls of I taken over; a restarted I must not
                                 recover them (their record is the adopter's to write)
    P:adoptions          LIST    JSON {dead, adopter, calls, failed, time}, newest first
    P:turn:users         HASH    TURN user -> password (long-term credentials, RFC 8489 §9.2)
    P:turn:secrets       SET     TURN REST API shared secrets (coturn's use-auth-secret)
    P:turn:quotas        HASH    TURN user -> allocations it may hold across the cluster
    P:turn:members       SET     TURN directory members, ``I:W`` (instance I's TURN worker W)
    P:turn:alive:I:W     STRING  set by member I:W at each sync; expires after the TTL (a member
                                 with neither this key nor allocations is dropped from the set)
    P:turn:allocations:I:W HASH  user -> allocations the user holds in I's worker W; expires
                                 unless refreshed, so a dead member's allocations stop counting
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "icerelay"

    @property
    def instances(self) -> str:
        return f"{self.prefix}:instances"

    def alive(self, instance: str) -> str:
        return f"{self.prefix}:alive:{instance}"

    def info(self, instance: str) -> str:
        return f"{self.prefix}:info:{instance}"

    def calls(self, instance: str) -> str:
        return f"{self.prefix}:calls:{instance}"

    @property
    def owner(self) -> str:
        return f"{self.prefix}:owner"

    def adopt_lock(self, instance: str) -> str:
        return f"{self.prefix}:adopt:{instance}"

    def adopted(self, instance: str) -> str:
        return f"{self.prefix}:adopted:{instance}"

    @property
    def adoptions(self) -> str:
        return f"{self.prefix}:adoptions"

    @property
    def turn_users(self) -> str:
        return f"{self.prefix}:turn:users"

    @property
    def turn_secrets(self) -> str:
        return f"{self.prefix}:turn:secrets"

    @property
    def turn_quotas(self) -> str:
        return f"{self.prefix}:turn:quotas"

    @property
    def turn_members(self) -> str:
        return f"{self.prefix}:turn:members"

    def turn_alive(self, member: str) -> str:
        return f"{self.prefix}:turn:alive:{member}"

    def turn_allocations(self, member: str) -> str:
        return f"{self.prefix}:turn:allocations:{member}"
