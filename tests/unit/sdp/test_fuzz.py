"""Fuzzing the SDP parser: random text, random bytes and mutated real SDPs raise only SdpError.

Whatever parses must also serialize back exactly and survive every typed accessor (each of which
may raise only SdpError too): the relay and the ICE agent call them on what peers send.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icerelay.errors import SdpError
from icerelay.sdp import Candidate, MediaDescription, SessionDescription

from .samples import SAMPLES

SETTINGS = settings(max_examples=int(os.environ.get("ICERELAY_FUZZ_EXAMPLES", "200")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Deterministic mutation rounds per sample (seeded, so a failure is reproducible).
ROUNDS = int(os.environ.get("ICERELAY_FUZZ_ROUNDS", "400"))

# Characters that matter to the grammar, plus a few that must never confuse it.
INTERESTING = [*" \t\r\n=:/.-+0123456789aAcmotvsx\0\x0b\x85é\u2028", "\r\n", "a=", "m="]


SESSION_READERS: list[Callable[[SessionDescription], object]] = [
    lambda s: s.origin, lambda s: s.connection, lambda s: s.session_name, lambda s: s.ice_lite,
    lambda s: s.ice_credentials, lambda s: s.ice_options, lambda s: s.own_direction,
    lambda s: s.attributes(), lambda s: s.own_ice_pacing,
]
MEDIA_READERS: list[Callable[[SessionDescription, MediaDescription], object]] = [
    lambda s, m: m.media_line, lambda s, m: m.connection, lambda s, m: m.effective_connection(s),
    lambda s, m: m.direction(s), lambda s, m: m.rtpmaps(), lambda s, m: m.rtcp,
    lambda s, m: m.rtcp_mux, lambda s, m: m.candidates(), lambda s, m: m.ice_credentials(s),
    lambda s, m: m.ice_options(s), lambda s, m: m.ice_pacing(s),
    lambda s, m: m.end_of_candidates(s), lambda s, m: m.remote_candidates,
    lambda s, m: m.ice_mismatch,
    lambda s, m: [(m.codec_name(f), m.fmtp(f)) for f in m.media_line.formats],
]


def exercise(sdp: SessionDescription) -> None:
    """Call every reader; each may raise SdpError but nothing else."""
    for read in SESSION_READERS:
        with contextlib.suppress(SdpError):
            read(sdp)
    for media in sdp.media:
        for read_media in MEDIA_READERS:
            with contextlib.suppress(SdpError):
                read_media(sdp, media)


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


def test_hostile_sizes() -> None:
    huge = "9" * 5000
    for text in (
        f"v=0\r\nm=audio 1 RTP/AVP {huge}\r\n",
        f"v=0\r\nm=audio {huge} RTP/AVP 0\r\n",
        f"v=0\r\no=- {huge} {huge} IN IP4 h\r\n",
        f"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:{huge} x/{huge}\r\na=fmtp:{huge} y\r\n",
        f"v=0\r\nm=audio 1 RTP/AVP 0\r\na=ice-pacing:{huge}\r\n",
        f"v=0\r\nc=IN IP4 224.0.0.1/{huge}\r\n",
        "v=0\r\n" + "a=x\r\n" * 20000,
    ):
        feed(text)
    sdp = SessionDescription.parse(f"v=0\r\no=- 1 {huge} IN IP4 h\r\nm=audio 1 RTP/AVP {huge}\r\n")
    assert sdp.media[0].codec_name(huge) is None
    with contextlib.suppress(SdpError):
        assert sdp.origin is not None
        sdp.origin.next_version()
