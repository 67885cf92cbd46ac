"""Which session a request belongs to: Call-ID, From-tag, To-tag and via-branch matching.

A *session* is one dialog of a call: the caller's side ``a`` (the From-tag of the initial offer)
and the callee's side ``b`` (the To-tag of the answer). A call (Call-ID) may hold several
sessions when a proxy forks and tells the branches apart by ``via-branch``. Requests name the
party that sent them: :attr:`DialogRef.from_tag` is the sender's tag, whichever side it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from icerelay.errors import RelayError
from icerelay.relay.policy import IcePriority
from icerelay.relay.streams import A, B, Stream

__all__ = ["DialogRef", "Dialogs", "Session", "describe_call"]


@dataclass(frozen=True, slots=True)
class DialogRef:
    """A request's place in a call, seen from the party that sent it.

    :param from_tag: the sending party's tag (in an answer, the To-tag of the SIP dialog).
    :param to_tag: the other party's tag, when known.
    """

    call_id: str
    from_tag: str
    to_tag: str | None = None
    via_branch: str | None = None


@dataclass(slots=True)
class Session:
    """One dialog of a call and its streams; lists are indexed by side (A, B)."""

    id: int
    call_id: str
    tags: list[str | None]
    via_branch: str | None
    created: float
    last_signal: float
    answered: float | None = None
    #: The side whose offer waits for an answer.
    pending: int | None = None
    streams: list[Stream] = field(default_factory=list)
    strict_source: bool = False
    ice_priority: IcePriority | None = None
    delete_at: float | None = None
    #: When the first ``delete`` arrived: the call's end for its record.
    deleted_at: float | None = None
    scheduled: float | None = None
    ended: bool = False
    user_agents: list[str | None] = field(default_factory=lambda: [None, None])
    metadata: dict[str, str] = field(default_factory=dict)
    #: Names the call's accounting record, chosen by the engine that first opened it and kept
    #: through snapshots: whichever instance records the call, the record has this id, so a
    #: shared accounting database keeps one ("" until an engine takes the session).
    record_id: str = ""

    def note(
        self, side: int, user_agent: str | None, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        """Remember what a request said about its sender and the call (for the record)."""
        if user_agent:
            self.user_agents[side] = user_agent
        self.metadata.update(metadata)

    @property
    def from_tag(self) -> str:
        """The caller's tag (side A)."""
        tag = self.tags[A]
        assert tag is not None
        return tag

    def matches(self, from_tag: str | None, to_tag: str | None, via_branch: str | None) -> bool:
        """True if the tags (either order) and via-branch given fit this session."""
        tags = set(self.tags)
        if from_tag is not None and from_tag not in tags:
            return False
        if to_tag is not None and to_tag not in tags:
            return False
        return via_branch is None or self.via_branch in (None, via_branch)


class Dialogs:
    """The live sessions, by Call-ID and by id."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Session]] = {}
        self.by_id: dict[int, Session] = {}
        self._next_id = 1

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)

    def matching(
        self,
        call_id: str,
        from_tag: str | None = None,
        to_tag: str | None = None,
        via_branch: str | None = None,
    ) -> list[Session]:
        """The sessions of ``call_id`` the tags fit (every one without tags)."""
        return [
            session
            for session in self.calls.get(call_id, [])
            if session.matches(from_tag, to_tag, via_branch)
        ]

    def for_offer(
        self, ref: DialogRef, now: float, *, strict_source: bool, max_sessions: int | None = None
    ) -> tuple[Session, int]:
        """The session and side an offer belongs to; a new session if none fits (RelayError
        when ``max_sessions`` are already open)."""
        sessions = self.calls.get(ref.call_id, [])
        tag, other = ref.from_tag, ref.to_tag
        if other is not None:
            for session in sessions:
                if session.tags == [tag, other]:
                    return session, A
                if session.tags == [other, tag]:
                    return session, B
        # An initial offer again (retransmitted with a new cookie, or forked without
        # via-branch): the same session, so the same ports.
        for session in sessions:
            if (
                session.tags[A] == tag
                and session.via_branch == ref.via_branch
                and (other is None or session.tags[B] is None)
            ):
                return session, A
        for session in sessions:
            if session.tags[B] == tag and other is None and session.answered is not None:
                return session, B
        if max_sessions is not None and len(self.by_id) >= max_sessions:
            raise RelayError(
                f"too many sessions in progress ({len(self.by_id)}): no new one is opened",
                counter="too_many_sessions",
                remote=True,
            )
        session = Session(
            id=self._next_id,
            call_id=ref.call_id,
            tags=[tag, other],
            via_branch=ref.via_branch,
            created=now,
            last_signal=now,
            strict_source=strict_source,
        )
        self._next_id += 1
        self.calls.setdefault(ref.call_id, []).append(session)
        self.by_id[session.id] = session
        return session, A

    def for_answer(self, ref: DialogRef) -> tuple[Session, int]:
        """The session and side an answer belongs to; RelayError if the call is unknown.

        An answer from a new To-tag binds the session to that tag (the first answer, or the
        latest final answer of a forked call).
        """
        sessions = self.calls.get(ref.call_id, [])
        tag, other = ref.from_tag, ref.to_tag
        for session in sessions:
            if session.tags == [tag, other]:
                return session, B
            if session.tags == [other, tag]:
                return session, A
        candidates = [session for session in sessions if session.tags[A] == tag]
        if ref.via_branch is not None:
            candidates = [s for s in candidates if s.via_branch == ref.via_branch] or candidates
        if not candidates:
            raise RelayError(f"answer for unknown call {describe_call(ref.call_id, tag, other)}")
        # Prefer a session still waiting for its first answer; otherwise a forked call got a
        # second final answer, and the latest one wins (it is the dialog the caller keeps).
        session = next((s for s in candidates if s.tags[B] is None), candidates[-1])
        session.tags[B] = other
        return session, B

    def awaits_answer_from(self, call_id: str, tag: str) -> bool:
        """True if a session of ``call_id`` has an open offer that the party ``tag`` must answer."""
        for session in self.calls.get(call_id, []):
            if session.pending is None:
                continue
            answerer = session.tags[1 - session.pending]
            # An initial offer has no To-tag yet: any party but the offerer may answer it.
            if answerer == tag or (answerer is None and session.tags[session.pending] != tag):
                return True
        return False

    def add(self, session: Session) -> None:
        """Take in a session rebuilt elsewhere (a snapshot): it gets this table's next id."""
        session.id = self._next_id
        self._next_id += 1
        self.calls.setdefault(session.call_id, []).append(session)
        self.by_id[session.id] = session

    def forget(self, session: Session) -> None:
        """Drop ``session`` (and its call when it was the last one)."""
        self.by_id.pop(session.id, None)
        sessions = self.calls.get(session.call_id)
        if sessions is not None:
            if session in sessions:
                sessions.remove(session)
            if not sessions:
                del self.calls[session.call_id]


def describe_call(call_id: str, from_tag: str | None, to_tag: str | None) -> str:
    """``call-id '...' from-tag '...' to-tag '...'`` for error messages."""
    text = f"call-id {call_id!r}"
    if from_tag is not None:
        text += f" from-tag {from_tag!r}"
    if to_tag is not None:
        text += f" to-tag {to_tag!r}"
    return text
