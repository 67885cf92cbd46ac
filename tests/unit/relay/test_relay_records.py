"""RelayRecords: a reply leaves only once the records of its request are committed (group
commit), a request that made none is answered at once, and a retransmission answered from the
cache does not overtake the commit of its original."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_records import RelayRecords

from .test_accounting import record


def test_replies_wait_for_their_records_commit(tmp_path: Path) -> None:
    sent: list[str] = []

    async def main() -> None:
        records = RelayRecords()
        await records.open(
            RelayServiceConfig(accounting=f"sqlite:{tmp_path}/db.sqlite3", mediaproxy_socket="")
        )
        accounting = records.accounting
        assert accounting is not None
        gate = threading.Event()
        commit = accounting.journal.commit

        def slow_commit(*args: object) -> None:
            gate.wait(5)  # a slow disk
            commit(*args)  # type: ignore[arg-type]

        accounting.journal.commit = slow_commit  # type: ignore[method-assign]
        committer = asyncio.create_task(records.run_committer(lambda: None))
        try:
            records.ended(record("d1"))
            records.hand_over(lambda _: sent.append("delete"), b"1")
            await asyncio.sleep(0.05)  # its commit is under way, held by the slow disk
            records.hand_over(lambda _: sent.append("retransmission"), b"1", after_commits=True)
            records.hand_over(lambda _: sent.append("ping"), b"2")
            assert sent == ["ping"]
            assert records.waiting
            gate.set()
            for _ in range(200):
                if len(sent) == 3:
                    break
                await asyncio.sleep(0.01)
            assert sent == ["ping", "delete", "retransmission"]
            assert not records.waiting
            assert [r.call_id for _, r in accounting.journal.pending(10)] in ([], ["d1"])
        finally:
            committer.cancel()
            await records.close()

    asyncio.run(asyncio.wait_for(main(), 20))
