"""Render the benchmark's JSON results as REPORT.md (generated; edit this file, not the report)."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
OURS, THEIRS = "icerelay", "coturn"


def _ratio(ours: float | None, theirs: float | None, lower_is_better: bool = False) -> str:
    """ours / coturn, worded so that > 1 always means 'ours is better'."""
    if not ours or not theirs:
        return "n/a"
    value = theirs / ours if lower_is_better else ours / theirs
    return f"{value:.2f}x"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}{unit}"
    return f"{int(value):,}{unit}"


def _get(data: Result, server: str, *path: str) -> Any:
    node: Any = data["servers"].get(server, {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _names(data: Result) -> list[str]:
    """Servers in the order they were measured (icerelay variants first, then coturn)."""
    return list(data["servers"])


def _ours(data: Result) -> list[str]:
    return [name for name in data["servers"] if name != THEIRS]


def _light_step(data: Result, ours: str = OURS) -> tuple[Result, Result] | None:
    """Both servers' first passing step at 100 streams (or the smallest common one)."""
    steps = {
        server: {
            s["streams"]: s
            for s in _get(data, server, "streams", "steps") or []
            if "error" not in s and s["loss_pct"] <= data["plan"]["loss_limit_pct"]
        }
        for server in (ours, THEIRS)
    }
    common = sorted(set(steps[ours]) & set(steps[THEIRS]))
    if not common:
        return None
    n = 100 if 100 in common else common[0]
    return steps[ours][n], steps[THEIRS][n]


def _common_step(data: Result, ours: str = OURS) -> tuple[int | None, Result, Result]:
    """Both servers' steps at the largest stream count both sustained.

    Latency and CPU per packet depend on load, so they are compared at the same load.
    """

    def good(server: str) -> dict[int, Result]:
        steps = _get(data, server, "streams", "steps") or []
        return {
            s["streams"]: s
            for s in steps
            if "error" not in s and s["loss_pct"] <= data["plan"]["loss_limit_pct"]
        }

    mine, theirs = good(ours), good(THEIRS)
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None, {}, {}
    n = common[-1]
    return n, mine[n], theirs[n]


def _limit_note(data: Result, server: str) -> str:
    """Marks a sustained figure that is a lower bound (the generator, not the server, ran out)."""
    limited_by = _get(data, server, "streams", "limited_by")
    if limited_by == "generator":
        return " (at least: generator limit)"
    if limited_by == "plan":
        return " (at least: largest step)"
    return ""


def _first_failure(data: Result, server: str) -> Result | None:
    """The lossy step that ended the stepping (its last attempt)."""
    for step in reversed(_get(data, server, "streams", "steps") or []):
        if "error" not in step and step["loss_pct"] > data["plan"]["loss_limit_pct"]:
            return dict(step)
    return None


def _findings(data: Result) -> list[str]:
    """Sentences computed from the figures, and the caveats that go with them."""
    lines = ["## Findings and caveats\n"]
    add = lines.append
    for name in _names(data):
        fail = _first_failure(data, name)
        if fail is None or _get(data, name, "streams", "limited_by") != "server loss":
            continue
        directions = fail["directions"]
        lost = sum(d["lost"] for d in directions.values())
        late = sum(d.get("late", 0) for d in directions.values())
        parts = []
        if late:
            parts.append(f"{late:,} arrived more than 0.5 s late (queued, not dropped)")
        dropped = 0
        for label, key in (
            ("the server's listening socket", "server_listen_socket_drops"),
            ("the server's relay sockets", "server_relay_socket_drops"),
            ("the generator's sockets", "generator_socket_drops"),
        ):
            if fail.get(key):
                dropped += fail[key]
                parts.append(f"{fail[key]:,} were dropped by the kernel on {label}")
        if lost - late - dropped > 0:
            parts.append(
                f"{lost - late - dropped:,} were lost elsewhere (in the server, on send, or "
                "still queued at the end)"
            )
        lossy = ", ".join(
            f"{direction} {d['loss_pct']:.2f}%"
            for direction, d in directions.items()
            if d["loss_pct"] > 0
        )
        add(
            f"- {name} lost more than {data['plan']['loss_limit_pct']}% at "
            f"{fail['streams']:,} streams ({lossy}; 'out' = client -> peer, 'in' = peer -> "
            f"client). Of the {lost:,} packets lost, {'; '.join(parts)}. Its CPU there: "
            f"{fail['server_cpu_pct']}% of one core, while other processes used "
            f"{fail.get('background_cpu_pct', '?')}% of the machine."
        )
    steps = [
        s
        for name in _names(data)
        for s in _get(data, name, "streams", "steps") or []
        if "background_cpu_pct" in s
    ]
    if steps:
        background = sorted(s["background_cpu_pct"] for s in steps)
        median = background[len(background) // 2]
        share = (
            f"processes other than the servers and the generator used "
            f"{background[0]:.0f}-{background[-1]:.0f}% (median {median:.0f}%) of the "
            f"machine's {data['environment']['cpus']} CPUs"
        )
        if median >= 10:
            add(
                f"- The machine was not quiet: during the load steps, {share}. A server that "
                "does not get the CPU in time overflows its socket queues, so the stream counts "
                "above are what each server sustained with the CPU share it could get, below "
                "what it would do alone. The servers met the same conditions (they took turns "
                "at every step), so the ratios mean more than the absolute figures; CPU per "
                "relayed packet and memory per allocation are the figures least moved by it."
            )
        else:
            generator = max(
                (s["sender_cpu_s"] + s["receiver_cpu_s"]) / (s["seconds"] + 0.7) for s in steps
            )
            add(
                f"- The machine was mostly quiet during the load steps: {share}. The generator "
                f"itself runs on the same CPUs (up to {generator:.1f} CPU at the highest step), "
                "so the limits above are for a server sharing the machine with its load."
            )
    add(
        "- Stream counts are stepped (see Setup): equal counts mean both servers passed the "
        "same step and failed the next, not that they are exactly equal; the ratio's resolution "
        "is the step size."
    )
    for name in _names(data):
        runs = _get(data, name, "allocation", "runs") or []
        for window in sorted({r["window"] for r in runs}):
            rates = sorted(r["allocations_per_s"] for r in runs if r["window"] == window)
            if len(rates) > 1:
                add(
                    f"- {name} allocation runs with {window} in flight ranged "
                    f"{rates[0]:,.0f}-{rates[-1]:,.0f}/s: run-to-run noise on this machine; "
                    "the summary takes the best run of each server."
                )
    add(
        "- Latency tails (p99, p99.9) are mostly scheduling delay on a loaded 2-CPU VM (a "
        "process that is runnable but not running), for the generator as much as for the "
        "server; p50 is the better measure of the servers' own per-packet cost."
    )
    threads = data["environment"].get("coturn_threads")
    add(
        f"- coturn runs {threads or 'several'} threads and can use every CPU; `icerelay` runs "
        f"one Python process per CPU ({data['environment']['cpus']}; its default, workers = "
        '"auto"), `icerelay-one` a single process, `icerelay-offload` the default plus the eBPF '
        "ChannelData offload: its relaying runs in softirq context, mostly charged to the "
        "generator's sending threads, so compare its total CPU per packet (server + generator), "
        "not only the server's."
    )
    add(
        "- icerelay keeps its safe defaults where they do not bind: per-allocation bandwidth "
        "quota (about 8 Mbit/s; a stream here is 0.14 Mbit/s), permission/channel quotas, "
        "per-source rate limit on unauthenticated requests (every client has its own source "
        "address). Its per-user and total allocation quotas are raised to match coturn's "
        "user-quota=0/total-quota=0."
    )
    add("")
    return lines


def summary(data: Result) -> Result:
    """One line of history: the headline figures of a run, to compare runs with each other."""
    steps = [
        s
        for name in _names(data)
        for s in _get(data, name, "streams", "steps") or []
        if "background_cpu_pct" in s
    ]
    background = sorted(s["background_cpu_pct"] for s in steps)
    line: Result = {
        "started_utc": data["started_utc"],
        "icerelay_version": _get(data, OURS, "version"),
        "background_cpu_pct_median": background[len(background) // 2] if background else None,
    }
    for name in _names(data):
        line[f"{name}_streams"] = _get(data, name, "streams", "sustained_streams")
        line[f"{name}_relayed_pps"] = _get(data, name, "streams", "sustained_relayed_pps")
        line[f"{name}_limited_by"] = _get(data, name, "streams", "limited_by")
        line[f"{name}_bytes_per_allocation"] = _get(
            data, name, "allocation", "bytes_per_allocation"
        )
        best = _get(data, name, "allocation", "best_by_window") or {}
        line[f"{name}_allocations_per_s"] = {w: r["allocations_per_s"] for w, r in best.items()}
    for ours in _ours(data):
        n, o_step, c_step = _common_step(data, ours)
        # CPU per packet only compares at the same load: keep the pair and the load.
        line[f"{ours}_cpu_vs_coturn"] = [
            o_step.get("server_cpu_us_per_packet"),
            c_step.get("server_cpu_us_per_packet"),
            n,
        ]
    return line


def _history_table(history: list[Result]) -> list[str]:
    lines = [
        "## Every full run so far\n",
        "Runs differ mostly in how busy the shared machine was; the spread is the honest error "
        "bar of the figures above. Ratios: icerelay / coturn (above 1.00x: icerelay better).\n",
        "| run (UTC) | icerelay code | variant | other processes % (median) | streams "
        "variant / coturn | ratio | allocations/s ratio (per window) | CPU/packet variant / "
        "coturn | bytes per allocation variant / coturn |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for h in history:
        variants = sorted(
            key.removesuffix("_streams")
            for key in h
            if key.endswith("_streams") and key.startswith("icerelay")
        )
        for ours in variants:
            o_n, c_n = h.get(f"{ours}_streams"), h.get("coturn_streams")
            o_a = h.get(f"{ours}_allocations_per_s") or {}
            c_a = h.get("coturn_allocations_per_s") or {}
            alloc = ", ".join(
                f"W={w}: {_ratio(o_a.get(w), c_a.get(w))}" for w in sorted(o_a, key=int) if w in c_a
            )
            pair = h.get(f"{ours}_cpu_vs_coturn")
            if pair is None and ours == OURS:  # first runs kept these under other keys
                pair = [
                    h.get("icerelay_cpu_us_per_packet"),
                    h.get("coturn_cpu_us_per_packet"),
                    h.get("common_streams"),
                ]
            cpu = "n/a"
            if pair and pair[0] and pair[1]:
                cpu = f"{pair[0]} / {pair[1]} us at {pair[2]} streams"
            mem = f"{_fmt(h.get(f'{ours}_bytes_per_allocation'))} / "
            mem += f"{_fmt(h.get('coturn_bytes_per_allocation'))}"
            limited = (
                " (coturn: generator-bound)" if h.get("coturn_limited_by") == "generator" else ""
            )
            background = h.get("background_cpu_pct_median")
            lines.append(
                f"| {h['started_utc'][:16]} | "
                f"{(h.get('icerelay_version') or 'n/a').removeprefix('icerelay ')} | {ours} | "
                f"{background if background is not None else 'n/a'} | "
                f"{_fmt(o_n)} / {_fmt(c_n)}{limited} | {_ratio(o_n, c_n)} | {alloc or 'n/a'} | "
                f"{cpu} | {mem} |"
            )
    lines.append("")
    return lines


def _comparison(data: Result, ours: str) -> list[str]:
    """The summary table of one icerelay variant against coturn."""
    plan = data["plan"]
    out: list[str] = []
    add = out.append
    add(f"### {ours} vs coturn\n")
    add(f"| metric | {ours} | coturn | ratio |")
    add("| --- | ---: | ---: | ---: |")
    o_pps = _get(data, ours, "streams", "sustained_relayed_pps")
    c_pps = _get(data, THEIRS, "streams", "sustained_relayed_pps")
    o_lim = _limit_note(data, ours)
    c_lim = _limit_note(data, THEIRS)
    ratio = _ratio(o_pps, c_pps)
    if "generator" in o_lim + c_lim and ratio != "n/a":
        ratio += " (a bound: see limits)"
    add(
        f"| relayed packets/s sustained at < {plan['loss_limit_pct']}% loss | "
        f"{_fmt(o_pps)}{o_lim} | {_fmt(c_pps)}{c_lim} | {ratio} |"
    )
    o_n = _get(data, ours, "streams", "sustained_streams")
    c_n = _get(data, THEIRS, "streams", "sustained_streams")
    add(
        f"| ... as concurrent bidirectional streams | {_fmt(o_n)} | {_fmt(c_n)} | "
        f"{_ratio(o_n, c_n)} |"
    )
    light = _light_step(data, ours)
    if light is not None:
        o_light, c_light = light
        for label, key in (("p50", "p50_us"), ("p99", "p99_us")):
            add(
                f"| {label} one-way latency at {o_light['streams']:,} streams (light load) | "
                f"{_fmt(o_light[key], ' us')} | {_fmt(c_light[key], ' us')} | "
                f"{_ratio(o_light[key], c_light[key], lower_is_better=True)} |"
            )
    n, o_step, c_step = _common_step(data, ours)
    if n is not None:
        o_p99, c_p99 = o_step.get("p99_us"), c_step.get("p99_us")
        add(
            f"| p99 one-way latency at {n:,} streams (largest load both sustained) | "
            f"{_fmt(o_p99, ' us')} | {_fmt(c_p99, ' us')} | "
            f"{_ratio(o_p99, c_p99, lower_is_better=True)} |"
        )
        o_p50, c_p50 = o_step.get("p50_us"), c_step.get("p50_us")
        add(
            f"| p50 one-way latency at {n:,} streams | {_fmt(o_p50, ' us')} | "
            f"{_fmt(c_p50, ' us')} | {_ratio(o_p50, c_p50, lower_is_better=True)} |"
        )
        o_cpu = o_step.get("server_cpu_us_per_packet")
        c_cpu = c_step.get("server_cpu_us_per_packet")
        add(
            f"| server CPU per relayed packet at {n:,} streams | {_fmt(o_cpu, ' us')} | "
            f"{_fmt(c_cpu, ' us')} | {_ratio(o_cpu, c_cpu, lower_is_better=True)} |"
        )
    o_p = _get(data, ours, "streams", "p99_us_at_sustained")
    c_p = _get(data, THEIRS, "streams", "p99_us_at_sustained")
    add(
        f"| p99 one-way latency at each server's own sustained load | {_fmt(o_p, ' us')} | "
        f"{_fmt(c_p, ' us')} | n/a (different loads) |"
    )
    for count, window in data["plan"]["allocation_runs"]:
        o_a = _get(data, ours, "allocation", "best_by_window", str(window), "allocations_per_s")
        c_a = _get(data, THEIRS, "allocation", "best_by_window", str(window), "allocations_per_s")
        add(
            f"| authenticated allocations/s, {count:,} clients, {window} in flight "
            f"(Allocate, 401, Allocate; best of runs) | {_fmt(o_a)} | {_fmt(c_a)} | "
            f"{_ratio(o_a, c_a)} |"
        )
    o_m = _get(data, ours, "allocation", "bytes_per_allocation")
    c_m = _get(data, THEIRS, "allocation", "bytes_per_allocation")
    add(
        f"| server memory per allocation (RSS growth / N) | {_fmt(o_m, ' B')} | "
        f"{_fmt(c_m, ' B')} | {_ratio(o_m, c_m, lower_is_better=True)} |"
    )
    add("")
    add("")
    return out


def render(data: Result, history: list[Result] | None = None) -> str:
    plan, env = data["plan"], data["environment"]
    out: list[str] = []
    add = out.append
    title = "TURN server benchmark: icerelay vs coturn"
    if data["mode"] == "smoke":
        title += " (SMOKE RUN: harness check only, figures meaningless)"
    add(f"# {title}\n")
    add(
        "Generated by `python -m benchmarks.turn` (`make bench`); do not edit by hand. "
        f"Run {data['started_utc']} to {data['finished_utc']}. Raw figures: `report.json`.\n"
    )

    add("## Summary\n")
    add(
        "Ratio = icerelay relative to coturn, worded so that above 1.00x means icerelay is better "
        "(for latency and memory, coturn's figure divided by ours). `icerelay` is our server with "
        "its defaults (one worker process per CPU, as coturn runs one relay thread per CPU; no "
        "offload); `icerelay-offload` adds the eBPF ChannelData offload (TC ingress); "
        "`icerelay-one` is one process.\n"
    )
    for ours in _ours(data):
        out.extend(_comparison(data, ours))
    for name in _names(data):
        if "error" in data["servers"].get(name, {"error": "not run"}):
            reason = data["servers"].get(name, {}).get("error", "not run")
            add(f"**{name} could not be measured:** {reason}\n")
        stop = _get(data, name, "streams", "stop_reason")
        if stop:
            add(f"- {name}: stepping stopped because: {stop}.")
    add("")

    out.extend(_findings(data))
    add("## Setup\n")
    add(
        f"- Machine: {env['cpus']} CPUs ({env['cpu_model']}), {env['kernel']}, {env['machine']}. "
        "Server and load generator share these CPUs (everything on 127.0.0.1), so every figure "
        "is for the server *with* a generator competing for the same cores."
    )
    add(
        f"- coturn: {_get(data, THEIRS, 'version') or 'n/a'}, UDP listener only, "
        f"{env['coturn_threads'] or '?'} threads (its default: relay threads = CPUs, plus "
        "listener/auth/housekeeping threads)."
    )
    add(
        f"- icerelay: {_get(data, OURS, 'version') or 'n/a'} (asyncio TurnService with uvloop; "
        "`icerelay`: one worker process per CPU sharing the listening port with SO_REUSEPORT "
        "and splitting the relay port range, `icerelay-offload`: the same with the eBPF "
        "offload, `icerelay-one`: one process)."
    )
    add(
        "- Both: UDP on 127.0.0.1, relay on 127.0.0.1 ports 22000-29999 (below the ephemeral "
        "range), loopback peers allowed, one static long-term-credential user, quotas off or "
        "above the load, logging to a file at the default level."
    )
    add(
        f"- Streams: each allocation carries one bidirectional RTP-like stream, "
        f"{plan['pps_per_stream_each_way']:.0f} packets/s each way, {plan['payload_bytes']}-byte "
        "payload (12-byte RTP header + 160 bytes G.711): client -> server as ChannelData (channel "
        "bound to the peer), relayed to one peer socket; peer -> relay port, relayed to the "
        "client as ChannelData. So one stream = 100 relayed packets/s. Stream counts stepped: "
        f"{', '.join(str(s) for s in plan['steps'])}, {plan['seconds_per_step']:.0f} s each, "
        "on a freshly started server per step. Before every measurement (step or allocation "
        "run) the harness waits up to 15 s for a moment when the machine is at most 25% busy, "
        "so that bursts of other work hit both servers alike as far as possible."
    )
    add(
        "- Load generator: `benchmarks/tools/turnload.c` (C; sender and receiver in two "
        "processes; sends from each allocation's own client socket; epoll receive; per-stream "
        "sequence accounting; one-way latency from a CLOCK_MONOTONIC send timestamp in every "
        "payload, exact 1 us histogram; run at nice -5 so that it keeps its schedule on the "
        "shared machine, the servers at the default priority). Allocations are made by a "
        "small independent Python "
        "TURN client (`benchmarks/turn/allocate.py`) whose sockets the C tool inherits."
    )
    add(
        "- Loss = (sent - received) / sent over both directions, where a packet counts as "
        "received only if it arrived within 0.5 s of being sent (later ones are counted as "
        "late, i.e. lost: a server that queues instead of dropping is overloaded all the same); "
        "the generator reads 0.5 s past its last send. A step counts as generator-saturated "
        "(not the server's limit) if the sender "
        "fell > 0.5% behind its schedule, the receiver was CPU-bound, or the generator's own "
        "sockets dropped most of the lost packets (kernel counters in /proc/net/udp)."
    )
    add(
        "- Allocations/s: N clients, each with its own socket and its own loopback source "
        "address (127.1.x.y, as real clients come from many addresses; a per-source limit on "
        "unauthenticated requests would otherwise be what is measured), W in flight at a time, "
        "each doing Allocate -> 401 -> authenticated Allocate (no channel); runs "
        + ", ".join(f"N={n:,} W={w}" for n, w in plan["allocation_runs"])
        + ", each repeated with the servers taking turns, best run reported. Memory: server RSS "
        "after the N allocations minus RSS before them (after 20 warm-up allocations), / N, "
        "median of the largest runs. RSS is user-space memory: kernel socket memory (the same "
        "one relay socket per allocation for both servers) is not in it.\n"
    )

    add("## Load steps\n")
    for name in _names(data):
        steps = _get(data, name, "streams", "steps")
        if not steps:
            continue
        add(f"### {name}\n")
        add(
            "| streams | try | offered pps | relayed pps | loss % | p50 us | p99 us | p99.9 us | "
            "server CPU % | CPU us/packet | server RSS MiB | machine busy % | other processes % | "
            "steal % | "
            "generator |"
        )
        add(
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | ---: | --- |"
        )
        for s in steps:
            if "error" in s:
                add(f"| {s['streams']:,} | | | | | | | | | | | | | | error: {s['error']} |")
                continue
            p999 = max(d["latency_us"]["p999"] for d in s["directions"].values())
            gen = "; ".join(s["generator_saturated"]) or "ok"
            add(
                f"| {s['streams']:,} | {s.get('attempt', 1)} | {s['offered_pps']:,} | "
                f"{s['relayed_pps']:,} | {s['loss_pct']:.3f} | {s['p50_us']:.0f} | "
                f"{s['p99_us']:.0f} | {p999:.0f} | {s['server_cpu_pct']} | "
                f"{_fmt(s.get('server_cpu_us_per_packet'))} | "
                f"{s['server_rss_kib'] / 1024:.1f} | {s.get('machine_busy_pct', '')} | "
                f"{s.get('background_cpu_pct', '')} | "
                f"{s.get('steal_pct', '')} | {gen} |"
            )
        add("")

    add("## Allocation runs\n")
    add(
        "| server | clients | window | succeeded | elapsed s | allocations/s | server CPU % | "
        "generator CPU % | RSS before MiB | RSS after MiB | bytes/allocation |"
    )
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in _names(data):
        for a in _get(data, name, "allocation", "runs") or []:
            add(
                f"| {name} | {a['clients']:,} | {a['window']} | {a['succeeded']:,} | "
                f"{a['elapsed_s']} | {a['allocations_per_s']:,} | {a['server_cpu_pct']} | "
                f"{a['generator_cpu_pct']} | {a['rss_before_kib'] / 1024:.1f} | "
                f"{a['rss_after_kib'] / 1024:.1f} | {_fmt(a['bytes_per_allocation'])} |"
            )
    add("")
    if history:
        out.extend(_history_table(history))
    add("## Reproduce\n")
    add(
        "```\nmake bench            # full run, ~10 min, rewrites this report\n"
        "make bench-smoke      # < 1 min harness check (results/REPORT-smoke.md)\n"
        "python -m benchmarks.turn --servers coturn   # one server only\n```\n"
    )
    return "\n".join(out) + "\n"
