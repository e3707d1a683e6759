"""Latency benchmark: smf unary echo against a raw uvloop echo with the same framing.

Run from the repository root::

    python bench/latency.py                  # table, 5 alternating repeats
    python bench/latency.py --json           # machine-readable result
    python bench/latency.py --calls 5000 --repeats 3

What is measured (bench/README.md has the numbers we got and how to read them):

* A 60-byte body is echoed over TCP loopback. Server and client always run in two
  separate, freshly started processes (``subprocess``; nothing pinned), both on uvloop.
* **raw** is the floor (``bench/_harness.py``): a minimal ``asyncio.BufferedProtocol``
  server that reads into its buffer, finds complete frames by the 16-byte ``<bBHIII`` smf
  header's size field and writes them back unchanged (one write per read), and a minimal
  client protocol that packs a header, writes header + body and resolves a future by
  session (with a view of the body) when the echo arrives.
* **smf**: ``smf.Server`` with ``add_handler(wire_id, h)``, ``async def h(ctx, body):
  return body`` (zero-copy echo), and ``smf.Client.call`` with default settings, both on
  ``smf.run`` (uvloop).
* **sequential**: one call at a time; per-call latency with ``time.perf_counter_ns``.
* **window**: ``--window`` (64) client coroutines each issue calls back to back, so 64
  are in flight; per-call latency (send to response, as the caller sees it) and calls/s.
* Both systems get the same payload, call counts, warmup and process layout. Repeats
  alternate the order (raw, smf, smf, raw, ...); every number in the table is the median
  over repeats. Percentiles are exact (all samples sorted, nearest rank).
* Placement: nothing is pinned, so the scheduler decides whether client and server share
  a CPU, and on a small VM that dominates latency (sharing one: no cross-CPU wake-up).
  Every 100 ms the parent samples the CPU each process last ran on; the share of samples
  where they shared one is reported per run and phase, with medians per placement class.
  ``--pin S,C`` pins server and client to CPUs S and C instead (a low-variance diagnostic
  for A/B work; the default pins nothing).

Targets (PASS/MISS; a miss never changes the exit status): sequential p50 within 1.3x
and p99 within 1.5x of raw; window calls/s at least 40% of raw's. They are judged on the
paired ratio: each repeat runs raw and smf back to back, so the two share the machine's
state, and the median over repeats of each repeat's smf/raw is the estimate. The ratio
of the two systems' medians is printed too; when this shared VM changes speed between
repeats it moves with that (medians from different repeats get divided), so it is
noisier (bench/README.md shows both for the same runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, only bench/ is on sys.path: make ``bench._harness`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# A/B runs (--baseline DIR): the baseline's processes import smf (and its bench
# harness) from DIR, an older checkout of this repository.
if os.environ.get("SMF_BENCH_RUNTIME"):
    sys.path.insert(0, os.environ["SMF_BENCH_RUNTIME"])

from bench._harness import (
    WIRE_ID,
    Call,
    PlacementSampler,
    drive_system,
    machine_info,
    make_payload,
    read_port,
    run_on_smf,
    run_on_uvloop,
    sequential,
    serve_raw,
    serve_smf,
    share_text,
    smf_version,
    spawn,
    stop_by_stdin,
    summarize,
    version_text,
    windowed,
)

SYSTEMS = ("raw", "smf")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latency.jsonl"
MODES = ("sequential", "window")

# (name, mode, metric, comparison, limit): smf/raw ratio targets from the issue.
TARGETS = (
    ("sequential p50 smf/raw", "sequential", "p50_us", "<=", 1.3),
    ("sequential p99 smf/raw", "sequential", "p99_us", "<=", 1.5),
    ("window calls/s smf/raw", "window", "calls_per_s", ">=", 0.40),
)


# ============================================================================ drivers


async def drive(call: Call, opts: dict[str, int]) -> dict[str, Any]:
    """Warmup and timed run of each mode; returns summaries and each phase's span
    (``time.monotonic``, comparable across processes) for the placement samples."""
    payload = make_payload(opts["payload"])
    if bytes(await call(WIRE_ID, payload)) != payload:  # check the echo once, untimed
        raise RuntimeError("echo returned a different body")
    result: dict[str, Any] = {"phases": {}}
    for mode in MODES:
        if opts["warmup"]:
            if mode == "sequential":
                await sequential(call, payload, opts["warmup"])
            else:
                await windowed(call, payload, opts["warmup"], opts["window"])
        began = time.monotonic()
        if mode == "sequential":
            lat, elapsed = await sequential(call, payload, opts["calls"])
        else:
            lat, elapsed = await windowed(call, payload, opts["window_calls"], opts["window"])
        result["phases"][mode] = (began, time.monotonic())
        result[mode] = summarize(lat, elapsed)
    return result


# ============================================================================ orchestration


def run_one(
    system: str,
    opts: dict[str, int],
    timeout: float,
    pin: tuple[int, int] | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """One server process and one client process for ``system``; the client's summary
    plus the placement seen while each phase ran. ``base`` is smf imported from the
    ``baseline`` checkout."""
    env = {"SMF_BENCH_RUNTIME": baseline} if system == "base" and baseline else None
    runs_as = "smf" if system == "base" else system
    server_args = ["--role", "server", "--system", runs_as]
    if pin is not None:
        server_args += ["--cpu", str(pin[0])]
    server = spawn(__file__, server_args, env)
    try:
        port = read_port(server, timeout)
        client_args = ["--role", "client", "--system", runs_as, "--port", str(port)]
        for key, value in opts.items():
            client_args += [f"--{key.replace('_', '-')}", str(value)]
        if pin is not None:
            client_args += ["--cpu", str(pin[1])]
        client = spawn(__file__, client_args, env)
        sampler = PlacementSampler(server.pid, client.pid)
        sampler.start()
        try:
            out, err = client.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            client.kill()
            client.communicate()
            raise RuntimeError(f"{system} client did not finish within {timeout}s") from None
        finally:
            sampler.done.set()
            sampler.join()
        if client.returncode != 0:
            raise RuntimeError(f"{system} client failed ({client.returncode}):\n{err}")
        result: dict[str, Any] = json.loads(out)
        phases = result.pop("phases")
        for mode in MODES:
            result[mode]["same_cpu_share"] = sampler.same_cpu_share(*phases[mode])
        return result
    finally:
        stop_by_stdin(server)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def median_of(runs: list[dict[str, Any]], mode: str) -> dict[str, float]:
    """Each numeric field's median over ``runs`` (a placement share is None in a run
    too short to be sampled: such runs are left out of that field)."""
    out: dict[str, float] = {}
    for k in runs[0][mode]:
        values = [v for run in runs if isinstance(v := run[mode][k], int | float)]
        if values:
            out[k] = _median(values)
    return out


def paired_ratio(
    runs: dict[str, list[dict[str, Any]]], mode: str, key: str, ref: str = "raw"
) -> float:
    """The median over repeats of smf/ref within each repeat (ref and smf ran back to
    back in it, in alternating order)."""
    return _median(
        [s[mode][key] / r[mode][key] for s, r in zip(runs["smf"], runs[ref], strict=True)]
    )


def _placement(share: float | None) -> str:
    if share is None:
        return "unknown"
    return "same-cpu" if share >= 0.5 else "split"


def by_placement(
    runs: dict[str, list[dict[str, Any]]], systems: tuple[str, ...] = SYSTEMS
) -> dict[str, Any]:
    """Per mode and placement class: each system's medians (and run count), and ratios
    where both systems had runs in that class."""
    out: dict[str, Any] = {}
    for mode in MODES:
        classes: dict[str, Any] = {}
        for cls in ("same-cpu", "split"):
            entry: dict[str, Any] = {}
            for system in systems:
                chosen = [r for r in runs[system] if _placement(r[mode]["same_cpu_share"]) == cls]
                if chosen:
                    entry[system] = {"runs": len(chosen), **median_of(chosen, mode)}
            if systems[0] in entry and "smf" in entry:
                entry["ratio"] = {
                    k: entry["smf"][k] / entry[systems[0]][k]
                    for k in ("p50_us", "p99_us", "p999_us", "calls_per_s")
                }
            if entry:
                classes[cls] = entry
        out[mode] = classes
    return out


def evaluate(ratio: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    for name, mode, metric, op, limit in TARGETS:
        value = ratio[mode][metric]
        ok = value <= limit if op == "<=" else value >= limit
        out.append(
            {
                "target": name,
                "mode": mode,
                "metric": metric,
                "ratio": value,
                "op": op,
                "limit": limit,
                "pass": ok,
            }
        )
    return out


def benchmark(
    opts: dict[str, int],
    repeats: int,
    timeout: float,
    pin: tuple[int, int] | None = None,
    log: Callable[[str], None] | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """``baseline``: compare smf with the smf of that checkout (A/B) instead of raw."""
    systems = ("base", "smf") if baseline else SYSTEMS
    ref = systems[0]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for r in range(repeats):
        order = systems if r % 2 == 0 else systems[::-1]
        for system in order:
            t0 = time.monotonic()
            res = run_one(system, opts, timeout, pin, baseline)
            runs[system].append(res)
            if log is not None:
                s, w = res["sequential"], res["window"]
                log(
                    f"  run {r + 1}/{repeats} {system}: sequential p50 {s['p50_us']:.1f} "
                    f"p99 {s['p99_us']:.1f} p999 {s['p999_us']:.1f} µs "
                    f"{s['calls_per_s']:.0f}/s [{share_text(s['same_cpu_share'])}] | "
                    f"window p50 {w['p50_us']:.1f} p99 {w['p99_us']:.1f} µs "
                    f"{w['calls_per_s']:.0f}/s [{share_text(w['same_cpu_share'])}] "
                    f"({time.monotonic() - t0:.1f} s)"
                )
    median = {s: {m: median_of(runs[s], m) for m in MODES} for s in systems}
    keys = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "calls_per_s")
    ratio = {m: {k: median["smf"][m][k] / median[ref][m][k] for k in keys} for m in MODES}
    paired = {m: {k: paired_ratio(runs, m, k, ref) for k in keys} for m in MODES}
    return {
        "benchmark": "bench/latency.py",
        "systems": list(systems),
        "baseline": baseline,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "smf": smf_version(),
        "transport": "tcp loopback",
        "options": {**opts, "repeats": repeats, "pin": list(pin) if pin else None},
        "median": median,
        "ratio": ratio,
        "paired_ratio": paired,
        "targets": [] if baseline else evaluate(paired),
        "by_placement": by_placement(runs, systems),
        "runs": runs,
    }


def format_table(result: dict[str, Any]) -> str:
    o = result["options"]
    version = version_text(result["smf"])
    pin = f"pinned server@{o['pin'][0]} client@{o['pin'][1]}" if o["pin"] else "unpinned"
    lines = [
        f"smf latency benchmark: {o['payload']}-byte unary echo over TCP loopback, server "
        f"and client in separate processes ({pin}), uvloop",
        f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}, smf "
        f"{version}; median of {o['repeats']} alternating repeats; "
        f"{o['warmup']} warmup calls per mode",
        "",
        f"{'mode':<24} {'system':<8} {'p50 µs':>9} {'p99 µs':>9} {'p999 µs':>9} {'calls/s':>10}",
    ]
    labels = {
        "sequential": f"sequential ({o['calls']} calls)",
        "window": f"window {o['window']} ({o['window_calls']})",
    }
    systems = result["systems"]
    ref = systems[0]
    for mode in MODES:
        for system in systems:
            m = result["median"][system][mode]
            lines.append(
                f"{labels[mode]:<24} {system:<8} {m['p50_us']:>9.1f} {m['p99_us']:>9.1f} "
                f"{m['p999_us']:>9.1f} {m['calls_per_s']:>10.0f}"
            )
        for label, key in ((f"smf/{ref}", "ratio"), ("paired", "paired_ratio")):
            r = result[key][mode]
            lines.append(
                f"{'':<24} {label:<8} {r['p50_us']:>8.2f}x {r['p99_us']:>8.2f}x "
                f"{r['p999_us']:>8.2f}x {r['calls_per_s']:>9.2f}x"
            )
    lines += [
        "",
        f"smf/{ref}: ratio of the medians; paired: median over repeats of each repeat's "
        f"smf/{ref}" + (f" (base: smf from {result['baseline']})" if result["baseline"] else ""),
    ]
    if result["targets"]:
        lines += ["", "targets (paired ratios):"]
    for t in result["targets"]:
        lines.append(
            f"  {t['target']:<24} {t['ratio']:5.2f}x  (target {t['op']} {t['limit']:.2f}x)  "
            f"{'PASS' if t['pass'] else 'MISS'}"
        )
    if not o["pin"]:
        lines += [
            "",
            "by placement (client and server on the same CPU in >= 50% of samples, or split;",
            "the scheduler decides, and on few cores it dominates latency):",
        ]
        for mode in MODES:
            for cls, entry in result["by_placement"][mode].items():
                parts = []
                for system in systems:
                    if system in entry:
                        e = entry[system]
                        parts.append(
                            f"{system} p50 {e['p50_us']:.1f} p99 {e['p99_us']:.1f} µs "
                            f"{e['calls_per_s']:.0f}/s ({e['runs']})"
                        )
                    else:
                        parts.append(f"{system} -")
                if "ratio" in entry:
                    r = entry["ratio"]
                    parts.append(
                        f"smf/{ref} p50 {r['p50_us']:.2f}x p99 {r['p99_us']:.2f}x "
                        f"calls/s {r['calls_per_s']:.2f}x"
                    )
                lines.append(f"  {mode:<10} {cls:<8}  " + " | ".join(parts))
        if not any(result["by_placement"][m] for m in MODES):
            lines.append("  (no samples: every phase ended within the 100 ms sampling interval)")
    return "\n".join(lines)


def record(result: dict[str, Any], path: Path = RESULTS) -> None:
    """Append the run's summary (everything but the per-run samples) as one JSON line:
    the benchmark's history (bench/README.md keeps only the method and one table)."""
    summary = {k: v for k, v in result.items() if k != "runs"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(summary, sort_keys=True) + "\n")


# ============================================================================ CLI


def _pin(text: str) -> tuple[int, int]:
    try:
        server, client = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected SERVER_CPU,CLIENT_CPU, e.g. 0,1") from None
    return server, client


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="smf vs raw uvloop echo: p50/p99/p999 and calls/s, sequential and "
        "with a window of calls in flight (see bench/README.md)."
    )
    p.add_argument("--calls", type=int, default=20000, help="sequential calls (20000)")
    p.add_argument(
        "--window-calls",
        type=int,
        default=None,
        help="calls in the windowed run (default: 5 x --calls, i.e. 100000)",
    )
    p.add_argument("--warmup", type=int, default=2000, help="untimed calls before each mode")
    p.add_argument("--window", type=int, default=64, help="calls in flight (64)")
    p.add_argument("--payload", type=int, default=60, help="body bytes (60)")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats (5)")
    p.add_argument(
        "--pin",
        type=_pin,
        default=None,
        metavar="S,C",
        help="pin server to CPU S and client to CPU C (diagnostic; default none)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per process (300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-run progress on stderr")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="A/B: compare with smf imported from DIR (an older checkout) instead of raw",
    )
    p.add_argument(
        "--no-record",
        action="store_true",
        help=f"do not append the result's summary to {RESULTS.relative_to(ROOT)}",
    )
    # Internal: the server and client child processes.
    p.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.window_calls is None:
        a.window_calls = 5 * a.calls
    if min(a.calls, a.window_calls, a.window, a.payload, a.repeats) < 1 or a.warmup < 0:
        p.error("counts must be positive")
    opts = {
        "calls": a.calls,
        "window_calls": a.window_calls,
        "warmup": a.warmup,
        "window": a.window,
        "payload": a.payload,
    }

    if a.role is not None:
        if a.cpu is not None:
            os.sched_setaffinity(0, {a.cpu})
        run = run_on_uvloop if a.system == "raw" else run_on_smf
        if a.role == "server":
            run(serve_raw() if a.system == "raw" else serve_smf())
        else:
            result = run(drive_system(a.system, a.port, drive, opts))
            sys.stdout.write(json.dumps(result) + "\n")
        return 0

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    baseline = os.path.abspath(a.baseline) if a.baseline else None
    result = benchmark(opts, a.repeats, a.timeout, a.pin, None if a.quiet else log, baseline)
    print(json.dumps(result, indent=2) if a.json else format_table(result))
    if not a.no_record:
        record(result)
    return 0  # a missed target is reported, never an error


if __name__ == "__main__":
    sys.exit(main())
