"""Fuzzing the SDP parser: random text, random bytes and mutated real SDPs raise only SdpError.

Whatever parses must also serialize back exactly and survive every typed accessor (each of which
may raise only SdpError too): the relay and the ICE agent call them on what peers send.
"""

from __future__ import annotations

import contextlib
import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icerelay.errors import SdpError
from icerelay.sdp import Candidate, SessionDescription

from .samples import SAMPLES

SETTINGS = settings(max_examples=int(os.environ.get("ICERELAY_FUZZ_EXAMPLES", "200")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Deterministic mutation rounds per sample (seeded, so a failure is reproducible).
ROUNDS = int(os.environ.get("ICERELAY_FUZZ_ROUNDS", "400"))

# Characters that matter to the grammar, plus a few that must never confuse it.
INTERESTING = [*" \t\r\n=:/.-+0123456789aAcmotvsx\0\x0b\x85é\u2028", "\r\n", "a=", "m="]


def exercise(sdp: SessionDescription) -> None:
    """Call every reader; each may raise SdpError but nothing else."""
    readers = [
        lambda: sdp.origin, lambda: sdp.connection, lambda: sdp.session_name,
        lambda: sdp.ice_lite, lambda: sdp.ice_credentials, lambda: sdp.ice_options,
        lambda: sdp.own_direction, lambda: sdp.attributes(), lambda: sdp.own_ice_pacing,
    ]
    for media in sdp.media:
        readers += [
            lambda media=media: media.media_line,
            lambda media=media: media.connection,
            lambda media=media: media.effective_connection(sdp),
            lambda media=media: media.direction(sdp),
            lambda media=media: media.rtpmaps(),
            lambda media=media: media.rtcp,
            lambda media=media: media.rtcp_mux,
            lambda media=media: media.candidates(),
            lambda media=media: media.ice_credentials(sdp),
            lambda media=media: media.ice_options(sdp),
            lambda media=media: media.ice_pacing(sdp),
            lambda media=media: media.end_of_candidates(sdp),
            lambda media=media: media.remote_candidates,
            lambda media=media: media.ice_mismatch,
            lambda media=media: [media.codec_name(f) for f in media.media_line.formats],
            lambda media=media: [media.fmtp(f) for f in media.media_line.formats],
        ]
    for read in readers:
        with contextlib.suppress(SdpError):
            read()


def feed(data: str | bytes) -> None:
    """Parse ``data``; on success check the exact round trip and run every reader."""
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    assert sdp.serialize() == data
    exercise(sdp)


def mutate(text: str, rng: random.Random) -> str:
    """A few random insertions, deletions, replacements and line swaps."""
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(text) + 1)
        action = rng.randrange(4)
        if action == 0:
            text = text[:position] + rng.choice(INTERESTING) + text[position:]
        elif action == 1:
            text = text[:position] + text[position + rng.randint(1, 5):]
        elif action == 2:
            text = text[:position] + rng.choice(INTERESTING) + text[position + 1:]
        else:
            lines = text.split("\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@SETTINGS
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    feed(text)
    feed("v=0\r\n" + text)
    feed("v=0\r\nm=audio 1 RTP/AVP 0\r\na=" + text)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    feed(data)
    feed(b"v=0\n" + data)


@SETTINGS
@given(st.sampled_from(sorted(SAMPLES)), st.randoms(use_true_random=False))
def test_mutated_samples_hypothesis(name: str, rng: random.Random) -> None:
    mutated = mutate(SAMPLES[name], rng)
    feed(mutated)
    feed(mutated.encode("utf-8", "surrogatepass"))


def test_mutated_samples_seeded() -> None:
    rng = random.Random(20261122)
    for name in sorted(SAMPLES):
        for _ in range(ROUNDS):
            feed(mutate(SAMPLES[name], rng))


@SETTINGS
@given(st.text(max_size=200))
def test_random_candidate_text(text: str) -> None:
    for value in (text, "1 1 UDP 1 192.0.2.1 1 typ host " + text, "a=candidate:" + text):
        try:
            candidate = Candidate.parse(value)
        except SdpError:
            continue
        # Whatever parses must write back and parse to the same candidate.
        assert Candidate.parse(candidate.to_sdp()) == candidate


def test_mutated_candidate_lines_seeded() -> None:
    rng = random.Random(8839)
    lines = [line.value.partition(":")[2]
             for text in SAMPLES.values()
             for line in SessionDescription.parse(text).all_lines()
             if line.attribute_name == "candidate"]
    for _ in range(ROUNDS * 5):
        value = mutate(rng.choice(lines), rng)
        try:
            candidate = Candidate.parse(value)
        except SdpError:
            continue
        assert Candidate.parse(candidate.to_sdp()) == candidate
