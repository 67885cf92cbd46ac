"""Pair priorities, checklist ordering, pruning, limits and freezing (RFC 8445 section 6.1.2)."""

from __future__ import annotations

from icerelay.ice.candidate import Candidate, CandidateType, make_local_candidate
from icerelay.ice.checklist import (
    CheckList,
    next_ordinary_check,
    set_initial_states,
    state_for_new_pair,
    unfreeze_foundation,
)
from icerelay.ice.pair import CandidatePair, PairState, pair_priority


def host(ip: str, port: int, component: int = 1, preference: int = 65535) -> Candidate:
    return make_local_candidate(
        CandidateType.HOST, (ip, port), (ip, port), component, local_preference=preference
    )


def remote(
    ip: str, port: int, component: int = 1, kind: str = "host", foundation: str | None = None
) -> Candidate:
    candidate_type = CandidateType(kind)
    local = make_local_candidate(candidate_type, (ip, port), (ip, port), component)
    return Candidate(
        foundation or local.foundation, component, "udp", local.priority, ip, port, candidate_type
    )


def test_pair_priority_formula() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(g, g) == (g << 32) + 2 * g
    # both agents compute the same number: G is always the controlling agent's candidate
    a, b = host("10.0.0.1", 1), remote("10.0.0.2", 2)
    controlling = CandidatePair(a, b, controlling=True)
    mirrored = CandidatePair(host("10.0.0.2", 2), remote("10.0.0.1", 1), controlling=False)
    assert controlling.priority == mirrored.priority


def test_role_change_recomputes_priorities_and_order() -> None:
    checklist = CheckList([1], controlling=True)
    high_local = CandidatePair(host("10.0.0.1", 1), remote("10.0.0.9", 9, kind="srflx"), True)
    high_remote = CandidatePair(
        make_local_candidate(
            CandidateType.RELAYED, ("198.51.100.1", 7), ("198.51.100.1", 7), 1, server="t"
        ),
        remote("10.0.0.8", 8),
        True,
    )
    checklist.add(high_local)
    checklist.add(high_remote)
    before = [p.priority for p in checklist.pairs]
    checklist.set_role(False)
    after = [p.priority for p in checklist.pairs]
    assert before != after
    assert after == sorted(after, reverse=True)


def test_checklist_orders_by_priority_and_prunes_duplicates() -> None:
    checklist = CheckList([1, 2], controlling=True)
    low = CandidatePair(host("10.0.0.1", 1, preference=1), remote("10.0.0.2", 2), True)
    high = CandidatePair(host("10.0.0.3", 1), remote("10.0.0.2", 2), True)
    rtcp = CandidatePair(host("10.0.0.3", 2, component=2), remote("10.0.0.2", 3, 2), True)
    for pair in (low, rtcp, high):
        assert checklist.add(pair) is pair
    assert checklist.pairs == [high, rtcp, low]
    # same local base and remote address: redundant, the existing pair stays
    duplicate = CandidatePair(host("10.0.0.1", 1, preference=0), remote("10.0.0.2", 2), True)
    assert checklist.add(duplicate) is low
    assert len(checklist.pairs) == 3
    assert checklist.find(("10.0.0.1", 1), ("10.0.0.2", 2)) is low


def test_checklist_limit_drops_lowest_priority_unchecked_pairs() -> None:
    checklist = CheckList([1], controlling=True, max_pairs=3)
    pairs = [
        CandidatePair(host("10.0.0.1", 1, preference=p), remote("10.0.0.2", 2 + p), True)
        for p in (10, 20, 30)
    ]
    for pair in pairs:
        checklist.add(pair)
    lowest = CandidatePair(host("10.0.0.1", 1, preference=1), remote("10.0.0.2", 99), True)
    assert checklist.add(lowest) is None
    best = CandidatePair(host("10.0.0.1", 1, preference=40), remote("10.0.0.2", 98), True)
    assert checklist.add(best) is best
    assert len(checklist.pairs) == 3
    assert pairs[0] not in checklist.pairs


def test_initial_states_unfreeze_one_pair_per_foundation() -> None:
    checklist = CheckList([1, 2], controlling=True)
    local1, local2 = host("10.0.0.1", 1), host("10.0.0.1", 2, component=2)
    peer_a1, peer_a2 = remote("192.0.2.1", 1), remote("192.0.2.1", 2, component=2)
    peer_b1 = remote("198.51.100.7", 3, kind="srflx")
    pairs = [
        CandidatePair(local2, peer_a2, True),
        CandidatePair(local1, peer_a1, True),
        CandidatePair(local1, peer_b1, True),
    ]
    for pair in pairs:
        checklist.add(pair)
    set_initial_states([checklist])
    # RTP (component 1) goes first for each foundation; RTCP waits for its result
    assert pairs[1].state is PairState.WAITING
    assert pairs[2].state is PairState.WAITING
    assert pairs[0].state is PairState.FROZEN
    assert next_ordinary_check(checklist, [checklist]) is pairs[1]
    pairs[1].state = PairState.SUCCEEDED
    unfreeze_foundation(pairs[1].foundation, [checklist])
    assert pairs[0].state is PairState.WAITING


def test_frozen_pair_is_unfrozen_when_its_foundation_is_idle() -> None:
    checklist = CheckList([1, 2], controlling=True)
    rtp = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.1", 1), True)
    rtcp = CandidatePair(host("10.0.0.1", 2, 2), remote("192.0.2.1", 2, 2), True)
    checklist.add(rtp)
    checklist.add(rtcp)
    set_initial_states([checklist])
    rtp.state = PairState.IN_PROGRESS
    assert next_ordinary_check(checklist, [checklist]) is None  # foundation busy
    rtp.state = PairState.FAILED
    assert next_ordinary_check(checklist, [checklist]) is rtcp
    assert rtcp.state is PairState.WAITING


def test_success_unfreezes_the_foundation_across_data_streams() -> None:
    audio = CheckList([1], controlling=True)
    video = CheckList([1], controlling=True)
    audio_pair = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.1", 1), True)
    video_pair = CandidatePair(host("10.0.0.1", 3), remote("192.0.2.1", 3), True)
    audio.add(audio_pair)
    video.add(video_pair)
    streams = [audio, video]
    set_initial_states(streams)
    # the first checklist gets the one Waiting pair of the foundation
    assert (audio_pair.state, video_pair.state) == (PairState.WAITING, PairState.FROZEN)
    assert next_ordinary_check(video, streams) is None
    audio_pair.state = PairState.SUCCEEDED
    unfreeze_foundation(audio_pair.foundation, streams)
    assert video_pair.state is PairState.WAITING


def test_trickled_pairs_wait_for_their_foundation() -> None:
    checklist = CheckList([1], controlling=True)
    first = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.1", 1, foundation="x"), True)
    checklist.add(first)
    set_initial_states([checklist])
    second = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.2", 1, foundation="x"), True)
    checklist.add(second)
    assert first.foundation == second.foundation
    assert state_for_new_pair(second, [checklist]) is PairState.FROZEN
    first.state = PairState.SUCCEEDED
    assert state_for_new_pair(second, [checklist]) is PairState.WAITING
    other = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.3", 1, kind="srflx"), True)
    checklist.add(other)
    assert state_for_new_pair(other, [checklist]) is PairState.WAITING


def test_triggered_queue_is_fifo_and_skips_removed_pairs() -> None:
    checklist = CheckList([1], controlling=True)
    a = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.1", 1), True)
    b = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.2", 1), True)
    checklist.add(a)
    checklist.add(b)
    checklist.trigger(b)
    checklist.trigger(a)
    checklist.trigger(b)
    assert list(checklist.triggered) == [b, a]
    checklist.remove(b)
    assert checklist.next_triggered() is a
    assert checklist.next_triggered() is None


def test_valid_list_and_nomination() -> None:
    checklist = CheckList([1], controlling=True)
    a = CandidatePair(host("10.0.0.1", 1), remote("192.0.2.1", 1), True)
    b = CandidatePair(host("10.0.0.1", 1, preference=3), remote("192.0.2.2", 1), True)
    for pair in (a, b):
        checklist.add(pair)
        pair.state = PairState.SUCCEEDED
    checklist.add_valid(b)
    checklist.add_valid(a)
    assert checklist.best_valid(1) is a
    assert checklist.nominated(1) is None
    b.nominated = True
    assert checklist.nominated(1) is b
    assert checklist.all_nominated()
