"""daemon/fdlimit.raise_fd_limit: raises the soft open-file limit, never above the hard one."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from icerelay.daemon.fdlimit import raise_fd_limit

logger = logging.getLogger("test.fdlimit")


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_raises_the_soft_limit(limits: tuple[int, int]) -> None:
    _, hard = limits
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard limit {hard} too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    assert raise_fd_limit(2048, logger, "test") == 2048
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2048
    # Never lowers it.
    assert raise_fd_limit(1500, logger, "test") == 2048


def test_warns_when_the_hard_limit_is_lower(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = limits
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit to stay below")
    with caplog.at_level(logging.WARNING, logger="test.fdlimit"):
        assert raise_fd_limit(hard + 1000, logger, "test") == hard
    assert "below the" in caplog.text
