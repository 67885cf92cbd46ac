"""Fixtures shared by the whole suite (helpers live in :mod:`tests.support`).

- ``netns_lab``: a :class:`tests.support.netns.Lab`, torn down after the test (skips without root,
  ``ip`` or ``nft``). ``build_nat_lab(netns_lab, "cone")`` makes client / NAT / public namespaces.
- ``coturn_factory``: ``coturn_factory(listening_ips=..., users=..., namespace=...)`` starts a
  turnserver (see :func:`tests.support.coturn.start_coturn`); all are stopped after the test.
  Skips when coturn is not installed.
- ``coturn``: one no-auth turnserver on 127.0.0.1 (random port).
- ``coturn_rfc5780``: one turnserver on 127.0.0.1 and 127.0.0.2 (so it does RFC 5780).
- ``serve_factory``: ``serve_factory(args, host=, port=)`` runs ``icerelay serve`` as a subprocess.
- ``free_udp_tcp_port``: a port free for UDP and TCP on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import coturn as coturn_support
from tests.support import netns
from tests.support.ports import free_port
from tests.support.serve import ServeProcess, start_serve


@pytest.fixture
def netns_lab() -> Iterator[netns.Lab]:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns.Lab() as lab:
        yield lab


@pytest.fixture
def coturn_factory(tmp_path: Path) -> Iterator[Callable[..., coturn_support.Coturn]]:
    reason = coturn_support.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    started: list[coturn_support.Coturn] = []

    def factory(**kwargs: Any) -> coturn_support.Coturn:
        workdir = tmp_path / f"coturn{len(started)}"
        server = coturn_support.start_coturn(workdir, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def coturn(coturn_factory: Callable[..., coturn_support.Coturn]) -> coturn_support.Coturn:
    return coturn_factory()


@pytest.fixture
def coturn_rfc5780(coturn_factory: Callable[..., coturn_support.Coturn]) -> coturn_support.Coturn:
    return coturn_factory(listening_ips=("127.0.0.1", "127.0.0.2"))


@pytest.fixture
def serve_factory() -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def factory(args: list[str], **kwargs: Any) -> ServeProcess:
        server = start_serve(args, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def free_udp_tcp_port() -> int:
    return free_port()
