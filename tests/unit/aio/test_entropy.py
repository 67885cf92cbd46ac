"""BufferedSystemRandom: the kernel's random bytes in blocks, each handed out once."""

from __future__ import annotations

import pytest

from icerelay.aio.entropy import BufferedSystemRandom


def test_draws_are_in_range_and_vary() -> None:
    rng = BufferedSystemRandom()
    ports = [rng.randrange(8192) for _ in range(5000)]
    assert min(ports) >= 0 and max(ports) < 8192
    # 5,000 draws from 8,192 values: far more than a few hundred distinct ones.
    assert len(set(ports)) > 3000
    assert all(0 <= rng.random() < 1 for _ in range(1000))
    assert all(0 <= rng.getrandbits(13) < 2**13 for _ in range(1000))
    assert rng.getrandbits(0) == 0


def test_bytes_are_never_handed_out_twice() -> None:
    rng = BufferedSystemRandom()
    # Across block boundaries too (4 KiB blocks, 100-byte draws).
    chunks = [rng.randbytes(100) for _ in range(200)]
    assert len(set(chunks)) == 200
    assert len(rng.randbytes(10_000)) == 10_000


def test_no_state() -> None:
    rng = BufferedSystemRandom()
    rng.seed(1)  # ignored, as SystemRandom does
    with pytest.raises(NotImplementedError):
        rng.getstate()
