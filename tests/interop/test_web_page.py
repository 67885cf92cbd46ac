"""The live page in a real browser: Debian's Chromium, driven by Playwright, watches a call made
through ng appear (with its traffic) and disappear when it is deleted.

The screenshot is kept under the test's tmp directory (``live-page.png``; pytest prints the
path with ``-rP``).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import HOST, SDP, Daemon, start_daemon

pytestmark = pytest.mark.interop

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = start_daemon(tmp_path / "serve")
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()


def _relay_port(sdp: bytes) -> int:
    line = next(x for x in sdp.decode().splitlines() if x.startswith("m=audio"))
    return int(line.split()[1])


def test_live_page_shows_a_call_and_its_end(daemon: Daemon, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM) and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    alice = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bob = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    alice.bind((HOST, 0))
    bob.bind((HOST, 0))
    call_id = "<script>alert(1)</script>@browser"
    # The root user (CI containers) needs Chromium's sandbox off; it is on for anyone else.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(daemon.url + "/")
            expect(page.locator("#status")).to_have_text("live", timeout=10_000)
            expect(page.locator("#no-sessions")).to_be_visible()

            offer = daemon.ng(
                {
                    "command": "offer", "call-id": call_id, "from-tag": "alice",
                    "sdp": SDP.format(port=alice.getsockname()[1]),
                }
            )  # fmt: skip
            assert offer[b"result"] == b"ok", offer
            answer = daemon.ng(
                {
                    "command": "answer", "call-id": call_id, "from-tag": "alice",
                    "to-tag": "bob", "sdp": SDP.format(port=bob.getsockname()[1]),
                }
            )  # fmt: skip
            assert answer[b"result"] == b"ok", answer
            alice_to = _relay_port(answer[b"sdp"])  # type: ignore[arg-type]
            bob_to = _relay_port(offer[b"sdp"])  # type: ignore[arg-type]

            session = page.locator(".session").filter(has_text="@browser")
            expect(session).to_have_count(1, timeout=10_000)
            # The Call-ID is shown as text, never run: no alert, no injected element.
            expect(session.locator(".call-id")).to_have_text(call_id)
            assert page.locator("script", has_text="alert").count() == 0

            # Some media both ways for a second, so that counters, latching and bitrate show.
            payload = b"\x00" * 160
            end = time.monotonic() + 1.5
            seq = 0
            while time.monotonic() < end:
                header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 1)
                alice.sendto(header + payload, (HOST, alice_to))
                bob.sendto(header + payload, (HOST, bob_to))
                seq += 1
                time.sleep(0.02)
            row = session.locator("tbody tr").first
            expect(row).to_contain_text(f"{HOST}:{alice.getsockname()[1]}", timeout=5_000)
            expect(row).to_contain_text("kb/s", timeout=5_000)
            screenshot = tmp_path / "live-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            print(f"screenshot: {screenshot}")

            deleted = daemon.ng({"command": "delete", "call-id": call_id})
            assert deleted[b"result"] == b"ok", deleted
            expect(session).to_have_count(0, timeout=10_000)
            expect(page.locator("#no-sessions")).to_be_visible()
            assert dialogs == []
        finally:
            browser.close()
            alice.close()
            bob.close()


def test_live_page_shows_turn_allocations(tmp_path: Path) -> None:
    """A TURN allocation held by a client shows on the page (user, permission), and goes
    away when the client deallocates."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    import asyncio
    import threading

    from playwright.sync_api import expect, sync_playwright

    from icerelay.aio.turn_client import TurnClient
    from icerelay.stun import Address
    from tests.support.ports import free_ports

    (turn_port,) = free_ports(1, kinds=("udp",))
    daemon = start_daemon(
        tmp_path / "serve",
        extra=(
            f'\n[turn]\nenabled = true\nlisten = ["{HOST}:{turn_port}"]\ntransports = ["udp"]\n'
            'users = { alice = "wonderland" }\nallow_peers = ["127.0.0.0/8"]\n'
            # One process: the page shows the first worker's allocations only.
            "workers = 1\n"
        ),
    )
    ready, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold_allocation() -> None:
        async def main() -> None:
            server = Address(HOST, turn_port)
            async with await TurnClient.connect(server, "alice", "wonderland") as allocation:
                await allocation.create_permission([Address(HOST, 9)])
                ready.set()
                while not release.is_set():
                    await asyncio.sleep(0.05)

        try:
            asyncio.run(main())
        except BaseException as error:
            failures.append(error)
            ready.set()

    holder = threading.Thread(target=hold_allocation)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=args
            )
            try:
                page = browser.new_page()
                page.goto(daemon.url + "/")
                expect(page.locator("#no-allocations")).to_be_visible(timeout=10_000)
                holder.start()
                assert ready.wait(10) and not failures, failures
                row = page.locator("#allocations tbody tr")
                expect(row).to_have_count(1, timeout=10_000)
                expect(row).to_contain_text("alice")
                expect(row).to_contain_text(HOST)
                page.screenshot(path=str(tmp_path / "live-page-turn.png"), full_page=True)
                release.set()
                holder.join(10)
                assert not failures, failures
                expect(row).to_have_count(0, timeout=10_000)
                expect(page.locator("#no-allocations")).to_be_visible()
            finally:
                browser.close()
    finally:
        release.set()
        if holder.is_alive() or holder.ident is not None:
            holder.join(10)
        assert daemon.stop() == 0, daemon.output()
