"""A throwaway PostgreSQL server for accounting tests: ``initdb`` in a temporary directory, a
UNIX socket there (no TCP), ``fsync=off``; stopped and removed by the fixture.

Tests that need one use the :func:`postgres_cluster` context manager (or a fixture around it);
it skips the test when the server binaries or psycopg are missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_ports

BINDIR = Path("/usr/lib/postgresql/15/bin")

__all__ = ["Cluster", "postgres_cluster"]


def _binary(name: str) -> str | None:
    candidate = BINDIR / name
    return str(candidate) if candidate.exists() else shutil.which(name)


@dataclass
class Cluster:
    """A running throwaway PostgreSQL server on a UNIX socket."""

    directory: Path
    port: int
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql:///postgres?host={self.directory}&port={self.port}&user=postgres"

    def start(self) -> None:
        import psycopg

        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "server.log").open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=1):
                    return
            except psycopg.OperationalError:
                assert self.process.poll() is None, (self.directory / "server.log").read_text()
                assert time.monotonic() < deadline, "PostgreSQL did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: PostgreSQL's "fast" shutdown (clients are disconnected at once).
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of one query (a fresh connection each time)."""
        import psycopg

        with psycopg.connect(self.url, connect_timeout=3) as connection:
            return list(connection.execute(sql).fetchall())  # type: ignore[arg-type]


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A started :class:`Cluster`, stopped and deleted afterwards (pytest.skip when the server
    or psycopg is not installed)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the 'postgres' extra)")
    initdb, postgres = _binary("initdb"), _binary("postgres")
    if initdb is None or postgres is None:
        pytest.skip("PostgreSQL server binaries are not installed (Debian package 'postgresql')")
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        # initdb refuses to run as root: the cluster belongs to the postgres user.
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own the cluster")
        as_user = ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="icerelay-pg-"))
    try:
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [*as_user, initdb, "-D", str(directory / "data"), "-A", "trust", "-U", "postgres",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        port = free_ports(1, kinds=("tcp",))[0]
        argv = [*as_user, postgres, "-D", str(directory / "data"), "-k", str(directory),
                "-p", str(port), "-c", "listen_addresses=", "-c", "fsync=off"]  # fmt: skip
        server = Cluster(directory, port, argv)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
