"""REPORT.md for the ICE benchmark, rendered from the run's JSON (nothing typed in by hand)."""

from __future__ import annotations

import datetime
from typing import Any

GOAL_EXCESS_RTT = 1.5
GOAL_SPEEDUP = 2.0

LABELS = {
    "icerelay": "icerelay, regular nomination (default)",
    "icerelay-aggressive": "icerelay, aggressive nomination",
    "aioice": "aioice 0.13 (aggressive; connected = completed)",
}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _span(summary: dict[str, float] | None) -> str:
    if not summary:
        return "-"
    return f"{_ms(summary['median'])} ({_ms(summary['min'])}-{_ms(summary['max'])})"


def _count(summary: dict[str, float] | None) -> str:
    if not summary:
        return "-"
    return f"{summary['median']:g} ({summary['min']:g}-{summary['max']:g})"


def render(data: dict[str, Any]) -> str:
    started = datetime.datetime.fromtimestamp(data["started_unix"], datetime.UTC)
    machine = data["machine"]
    lines = [
        "# ICE benchmark: icerelay's agent vs aioice",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {data['runs_per_impl']} runs per implementation and "
        f"setup, {data['seconds']:.0f} s in all. Machine: {machine.get('cpus', '?')} CPUs, load "
        f"average {' '.join(machine.get('load_avg_at_start', ['?']))} at start (shared with "
        f"other work), Python {machine['python']}, aioice {machine.get('aioice', '?')}.",
        "",
        "Reproduce: `make bench-ice` or `.venv/bin/python -m benchmarks.ice` (as root for the "
        "namespace setups; `--runs N`, `--setups loopback,turn`, `--smoke`). Raw figures: "
        "`benchmarks/ice/report.json`.",
        "",
        "## What is measured",
        "",
        "Two agents of one implementation, each its own process "
        "(`tests/interop/ice_agents/agent.py`), gather, then get each other's credentials and "
        "candidates at the same moment (no trickle). Time zero is when the later of the two has "
        "them; times are on the machine-wide monotonic clock.",
        "",
        "- **connected**: both agents can send media. icerelay: a valid pair on both sides "
        "(RFC 8445 allows media before nomination). aioice: its `connect()` returns, which is "
        "only after nomination, so for aioice *connected* = *completed*.",
        "- **completed**: the pair is nominated on both sides (icerelay reports it; aioice's "
        "`connect()` returns only then).",
        "- **checks**: Binding requests both agents sent until then, retransmissions included "
        "(aioice counted by wrapping its `StunProtocol.send_stun`).",
        "- **floor**: one round trip on the best pair, measured with a 100-byte UDP echo: "
        "between the two agents' addresses (host setups), or from each agent to the TURN server "
        "and back, summed (relayed path a -> server -> b and back; the server's processing "
        "time is not in it).",
        "",
        "Figures: median (min-max). *x floor* = median / floor.",
        "",
    ]
    for name, setup in data["setups"].items():
        floor = setup["floor_ms"]
        impls = setup["impls"]
        lines += [f"## {name}", "", _setup_text(name, setup), ""]
        lines += [
            f"Floor: **{_ms(floor)} ms**.",
            "",
            "| implementation | connected, ms | x floor | completed, ms | x floor "
            "| checks to connected / completed | selected pair (a: local/remote) | ok / failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for impl, label in LABELS.items():
            entry = impls.get(impl)
            if entry is None:
                continue
            completed = entry.get("completed_ms", entry.get("connected_ms"))
            checks_completed = entry.get("checks_completed", entry.get("checks_connected"))
            lines.append(
                f"| {label} | {_span(entry.get('connected_ms'))} "
                f"| {_ratio(entry.get('connected_ms'), floor)} | {_span(completed)} "
                f"| {_ratio(completed, floor)} | {_count(entry.get('checks_connected'))} / "
                f"{_count(checks_completed)} | {', '.join(entry.get('pairs', []))} "
                f"| {entry['ok']} / {entry['failed']} |"
            )
        lines.append("")
        lines += _verdict(impls, floor)
        for impl, label in LABELS.items():
            for failure in impls.get(impl, {}).get("failures", [])[:3]:
                text = " ".join(failure[:300].split())
                lines.append(f"- Failed run, {label}: `{text}`")
        lines.append("")
    for name, reason in data.get("skipped", {}).items():
        lines += [f"## {name}: not run", "", reason, ""]
    lines += _notes()
    return "\n".join(lines) + "\n"


def _ratio(summary: dict[str, float] | None, floor: float | None) -> str:
    if not summary or not floor:
        return "-"
    return f"{summary['median'] / floor:.1f}"


def _setup_text(name: str, setup: dict[str, Any]) -> str:
    delay = setup.get("delay_method") or ""
    texts = {
        "loopback": "Both agents on 127.0.0.1, host candidates only.",
        "netns-50ms": "Two namespaces joined by a router adding 25 ms each way "
        f"({delay}); host candidates.",
        "turn": "Relay-only on both sides (icerelay `AgentConfig(relay_only=True)`, aioice "
        "`TransportPolicy.RELAY`), one coturn 4.6.1 on 127.0.0.1 for both.",
        "turn-50ms": "Relay-only on both sides through coturn in namespace b of the 50 ms pair "
        f"({delay}): a's relay traffic crosses the delay, b's does not.",
    }
    floor = f"Floor: {setup['floor_method']}."
    return f"{texts.get(name, name)} {floor}"


def _verdict(impls: dict[str, Any], floor: float | None) -> list[str]:
    out: list[str] = []
    aioice = impls.get("aioice", {}).get("connected_ms")
    for impl in ("icerelay", "icerelay-aggressive"):
        entry = impls.get(impl, {})
        connected = entry.get("connected_ms")
        completed = entry.get("completed_ms")
        label = LABELS[impl]
        if connected and floor:
            excess = (connected["median"] - floor) / floor
            met = "met" if excess <= GOAL_EXCESS_RTT else "NOT met"
            done = ""
            if completed:
                done = f"; completed {(completed['median'] - floor) / floor:.1f} RTT above it"
            out.append(
                f"- {label}: connected {excess:.1f} RTT above the floor (goal <= "
                f"{GOAL_EXCESS_RTT}: {met}){done}."
            )
        if connected and aioice:
            speedup = aioice["median"] / connected["median"]
            met = "met" if speedup >= GOAL_SPEEDUP else "NOT met"
            like = ""
            if completed:
                like = f"; nominated vs nominated {aioice['median'] / completed['median']:.1f}x"
            out.append(
                f"- {label} vs aioice: aioice takes {speedup:.1f}x as long to connected "
                f"(goal >= {GOAL_SPEEDUP:g}x: {met}){like}."
            )
    return out


def _notes() -> list[str]:
    return [
        "## Reading the figures",
        "",
        "- **Checks to connected, host setups: icerelay 4-5, aioice 2.** Both agents send their "
        "first check at the same moment; each then receives the peer's check while its own is in "
        "flight. RFC 8445 section 7.3.1.4 says to cancel the in-progress check and send a "
        "triggered check on that pair, which icerelay does (one more check per side); aioice "
        "answers and keeps waiting for its first one. On a clean path both finish in one RTT.",
        "- **Regular vs aggressive nomination.** icerelay's default (regular, the only mode "
        "RFC 8445 keeps) needs one more check with USE-CANDIDATE once the pair is valid: "
        "completed = connected + 1 RTT (the nomination check leaves at once, outside Ta). "
        "aioice always nominates aggressively (USE-CANDIDATE in every check), so compare it "
        "with icerelay's aggressive row for *completed*; media can flow at *connected* in both "
        "icerelay modes.",
        "- **Through TURN the first check can be lost.** Each agent installs a permission for the "
        "peer's relayed address when it gets the candidates; a check that reaches the peer's "
        "relay before the peer's CreatePermission reached the server is dropped there. icerelay "
        "answers the peer's next check with a triggered check at once; aioice waits for its STUN "
        "retransmission timer (~500 ms), hence its outliers.",
        "- **TURN across 50 ms: about 1.5 RTT, as early as TURN allows.** b's first check "
        "reaches a's relay before a's CreatePermission (25 ms on its way to the server) and is "
        "dropped: a server relays nothing to a before a asked it to. icerelay's TURN client "
        "sends a's first check right behind the CreatePermission on the same 5-tuple "
        "(`Allocation(pipeline_permissions=True)`, the default; servers handle one 5-tuple's "
        "messages in order), so a's check reaches b at ~25 ms and its answer is back at ~50 ms; "
        "b's triggered check, answering a's, passes a's relay at ~25 ms and its answer reaches b "
        "at ~75 ms: connected at 1.5 RTT. Before pipelining (report of 10:53 UTC, and a 5-run "
        "check of that code just before this run) the client held a's first check until the "
        "CreatePermission *success* was back: connected 133 ms (2.6x floor), completed "
        "160 ms (regular) / 136 ms (aggressive). aioice loses its first check the same way and "
        "waits for its 500 ms retransmission.",
        "- **Private host candidates and TURN.** Not exercised here (relay-only agents), but "
        "fixed with the same change: a TURN server refuses a whole CreatePermission when it "
        "refuses one of its peers (RFC 8656 section 10.2), and private addresses are on servers' "
        "default deny lists. icerelay's TURN client asks for such peers one by one (global "
        "ones still share a request) and splits a refused batch, so a denied host candidate no "
        "longer costs the peer's other candidates their permission "
        "(tests/sim/test_ice_sim.py, test_a_refused_private_host_candidate_...).",
        "",
        "## Notes",
        "",
        "- This machine's kernel has no netem (`CONFIG_NET_SCH_NETEM` is not set), so the 50 ms "
        "setups use a userspace delay line (`tests/interop/ice_agents/delayline.py`): policy "
        "routing in the router namespace sends every packet through a TUN device pair with the "
        "delay between them. Where netem exists the harness uses `tc qdisc ... netem` instead "
        "(the setup line says which).",
        "- On loopback the floor is a few tens of microseconds, so the *x floor* figures there "
        "mostly measure scheduling (pacing timers, Python event loops in two processes), not "
        "the protocol.",
        "- The machine is shared (2 CPUs, other helpers' tests running): absolute times carry "
        "scheduling noise of a few ms; the min-max spans show it.",
    ]
