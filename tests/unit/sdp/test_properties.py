"""Property-based round trips: generated SDP texts and candidates, and mutated documents."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icerelay.sdp import Candidate, Rtcp, SessionDescription, parse

from .strategies import Document, addresses, candidates, documents, ports

# Kept small so the SDP suite stays within seconds on a shared 2-core machine; raise
# ICERELAY_PROPERTY_EXAMPLES for a deeper run.
SETTINGS = settings(max_examples=int(os.environ.get("ICERELAY_PROPERTY_EXAMPLES", "60")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(documents())
def test_generated_text_round_trips_and_reads_back(document: Document) -> None:
    sdp = parse(document.text)
    assert sdp.to_text() == document.text
    assert SessionDescription.parse(document.text.encode()).to_bytes() == document.text.encode()
    assert sdp.origin == document.origin
    assert sdp.connection == document.session.connection
    assert len(sdp.media) == len(document.media)
    for media, expected in zip(sdp.media, document.media, strict=True):
        assert media.port == expected.port
        assert media.connection == expected.connection
        assert media.rtcp == expected.rtcp
        assert media.candidates() == expected.candidates


@SETTINGS
@given(candidates)
def test_candidate_round_trips(candidate: Candidate) -> None:
    value = candidate.to_sdp()
    assert Candidate.parse(value) == candidate
    assert Candidate.parse("a=" + candidate.to_attribute()) == candidate
    assert Candidate.parse(value).to_sdp() == value


_optional_rtcp = st.none() | st.builds(Rtcp, ports)
_new_candidates = st.lists(candidates, max_size=3)


def mutate(sdp: SessionDescription, data: st.DataObject) -> None:
    """Apply a random series of the relay's mutations to ``sdp``."""
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        if not sdp.media:
            sdp.set_connection(data.draw(addresses))
            continue
        media = sdp.media[data.draw(st.integers(0, len(sdp.media) - 1), label="media")]
        action = data.draw(st.integers(0, 5), label="action")
        if action == 0:
            media.set_port(data.draw(ports))
        elif action == 1:
            media.set_connection(data.draw(addresses))
        elif action == 2:
            media.set_rtcp(data.draw(_optional_rtcp))
        elif action == 3:
            media.add_candidates(data.draw(_new_candidates))
        elif action == 4:
            sdp.remove_all_ice()
        else:
            media.replace_attribute("ptime", str(data.draw(st.integers(10, 60))))


@SETTINGS
@given(documents(), st.data())
def test_mutated_documents_round_trip(document: Document, data: st.DataObject) -> None:
    original = parse(document.text)
    x = original.copy()
    mutate(x, data)
    again = parse(x.to_text())
    assert again == x
    assert again.to_text() == x.to_text()
    for before, after in zip(x.media, again.media, strict=True):
        assert before.port == after.port
        assert before.connection == after.connection
        assert before.rtcp == after.rtcp
        assert before.candidates() == after.candidates()
    # The copy was mutated, never the original.
    assert original.to_text() == document.text
