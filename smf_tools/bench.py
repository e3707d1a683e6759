"""``smf bench``: load any method of any schema and report tail latency.

    smf bench HOST:PORT --schema FILE.fbs --method Service.Method --data JSON|@file.json
        [-I DIR]... [--connections N] [--concurrency N] [--calls N | --duration S]
        [--warmup N] [--rate CALLS_PER_S] [--timeout S] [--json] [--hgrm FILE]

The request is encoded once from JSON by the real flatc. Closed loop by default:
``connections x concurrency`` callers, each sending its next call when the last one
returns. ``--rate`` is open loop: every caller has a schedule, and each latency is
measured from when the call *should* have been sent, so a stalled server shows up in
the percentiles instead of silently slowing the load (coordinated omission, as wrk2
corrects it); a run that falls short of ``--rate`` says so (stderr, and ``--json``).

Before the load, a refused connection is retried for ``--timeout`` (a server started in
the background a moment ago), and one unrecorded call checks the peer: no valid smf frame
within ``--timeout`` (not an smf server) or a 404 (no such method on the server) stops
the run with a message saying which.

A server-streaming method (``streaming: "server"`` in the schema) is loaded with
``connections x concurrency`` open streams, each reading its stream to the end and
opening the next with the same request, for ``--messages N`` (default 100000) or
``--duration S`` (open streams are then cancelled); a stream silent for ``--timeout``
stops the run (error ``stalled``). It reports messages/s, MB/s and the latency from
opening a stream to its first message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from smf.client import Client
from smf.errors import ConnectionLost, DeadlineExceeded, NotFound, RpcError
from smf.loop import run
from smf.metrics import LatencyRecorder

PERCENTILES = (50.0, 75.0, 90.0, 99.0, 99.9, 99.99)

# Below this fraction of ``--rate``, the run did not deliver the load it was asked for.
RATE_SHORTFALL = 0.95

# What an error status means for a bench run (printed next to its count).
STATUS_MEANING = {"404": "no such method on the server"}


class BenchError(Exception):
    """Bad arguments or a schema/method/data problem, with a message for the user."""


@dataclass(frozen=True)
class Target:
    wire_id: int
    request: bytes
    method: str  # "Service.Method"
    schema: str = ""
    streaming: str = "none"  # the method's ``streaming`` attribute: "none" or "server"


@dataclass
class LoadSpec:
    host: str
    port: int
    target: Target
    connections: int = 1
    concurrency: int = 1
    calls: int | None = 10_000
    duration: float | None = None
    messages: int | None = None  # server streams: stop after this many messages
    warmup: int = 0
    rate: float | None = None
    timeout: float = 10.0
    progress: bool = False


@dataclass
class BenchResult:
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    recorder: LatencyRecorder = field(default_factory=LatencyRecorder)
    # Server streams: ``calls`` counts streams finished, ``recorder`` holds the latency
    # to each stream's first message.
    messages: int = 0
    message_bytes: int = 0

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.message_bytes / 1e6 / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    def histogram(self) -> HdrHistogram:
        return self.recorder.histogram()

    def latency_us(self) -> dict[str, float]:
        h = self.histogram()
        out: dict[str, float] = {}
        for p in PERCENTILES:
            out[f"p{p:g}"] = float(h.get_value_at_percentile(p)) if h.get_total_count() else 0.0
        out["max"] = float(h.get_max_value())
        return out

    def below_target_rate(self, spec: LoadSpec) -> bool:
        return spec.rate is not None and self.calls_per_s < spec.rate * RATE_SHORTFALL

    def warnings(self, spec: LoadSpec) -> list[str]:
        """What the user must know to read the numbers right."""
        out: list[str] = []
        if spec.rate is not None and self.below_target_rate(spec):
            callers = spec.connections * spec.concurrency
            out.append(
                f"achieved {self.calls_per_s:,.0f} calls/s, below the target --rate "
                f"{spec.rate:.12g}: {callers} caller(s) could not keep up (each has one call "
                "in flight); raise --concurrency or --connections"
            )
        return out

    def to_json(self, spec: LoadSpec) -> dict[str, Any]:
        if spec.target.streaming == "server":
            return {
                "method": spec.target.method,
                "schema": spec.target.schema,
                "streaming": "server",
                "address": f"{spec.host}:{spec.port}",
                "connections": spec.connections,
                "concurrency": spec.concurrency,
                "streams": self.calls,
                "messages": self.messages,
                "bytes": self.message_bytes,
                "errors": dict(sorted(self.errors.items())),
                "messages_per_s": round(self.messages_per_s, 1),
                "mb_per_s": round(self.mb_per_s, 3),
                "first_message_latency_us": self.latency_us(),
            }
        return {
            "method": spec.target.method,
            "schema": spec.target.schema,
            "address": f"{spec.host}:{spec.port}",
            "connections": spec.connections,
            "concurrency": spec.concurrency,
            "target_rate": spec.rate,
            "calls": self.calls,
            "errors": dict(sorted(self.errors.items())),
            "calls_per_s": round(self.calls_per_s, 1),
            "below_target_rate": self.below_target_rate(spec),
            "warnings": self.warnings(spec),
            "latency_us": self.latency_us(),
        }


# --------------------------------------------------------------------------- resolving


def resolve_target(
    schema: Path, method: str, data: str, include_dirs: list[Path] | None = None
) -> Target:
    """The wire id of ``Service.Method`` in ``schema`` and ``data`` (JSON) encoded as its
    request type by flatc."""
    from smfc.bfbs import read_schema
    from smfc.flatc import FlatcError, binary_schema, find_flatc

    includes = include_dirs or []
    if "." not in method:
        raise BenchError(f"--method {method!r}: expected Service.Method")
    service_name, method_name = method.rsplit(".", 1)
    flatc = find_flatc()
    with tempfile.TemporaryDirectory(prefix="smf-bench-") as tmp:
        try:
            bfbs = binary_schema(flatc, schema, includes, schema.parent, Path(tmp))
        except FlatcError as exc:
            raise BenchError(f"{schema}: {exc}") from exc
        model = read_schema(bfbs)
        services = [s for s in model.services.values() if service_name in (s.name, s.short_name)]
        if not services:
            known = ", ".join(sorted(model.services)) or "none"
            raise BenchError(f"no service {service_name!r} in {schema} (services: {known})")
        service = services[0]
        found = [m for m in service.methods if m.name == method_name]
        if not found:
            known = ", ".join(m.name for m in service.methods)
            raise BenchError(f"service {service.name} has no method {method_name!r} ({known})")
        m = found[0]
        streaming = m.attributes.get("streaming", "none")
        if streaming not in ("none", "server"):
            raise BenchError(
                f"{service.short_name}.{m.name} is a {streaming!r} stream: smf bench loads "
                "unary and server-streaming methods only"
            )
        try:
            request = encode_json(flatc, schema, includes, m.request.name, data, Path(tmp))
        except BenchError as exc:
            raise BenchError(f"--data is not a valid {m.request.name}: {exc}") from exc
    return Target(
        service.wire_id(m), request, f"{service.short_name}.{m.name}", str(schema), streaming
    )


def encode_json(
    flatc: str, schema: Path, includes: list[Path], root_type: str, data: str, tmp: Path
) -> bytes:
    """``data`` (JSON) as a binary FlatBuffer of ``root_type``, encoded by flatc."""
    src = tmp / "request.json"
    src.write_text(data)
    argv = [flatc, "-b", "--root-type", root_type]
    for directory in includes:
        argv += ["-I", str(directory)]
    argv += ["-o", str(tmp), str(schema), str(src)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = tmp / "request.bin"
    if proc.returncode != 0 or not out.exists():
        raise BenchError((proc.stderr or proc.stdout).strip() or "flatc failed")
    return out.read_bytes()


# --------------------------------------------------------------------------- running


async def run_load(spec: LoadSpec) -> BenchResult:
    if spec.target.streaming == "server":
        return await run_stream_load(spec)
    result = BenchResult()
    clients = [Client(spec.host, spec.port, timeout=spec.timeout) for _ in range(spec.connections)]
    try:
        for c in clients:
            await _connect(c, spec.timeout)
    except BenchError:
        for c in clients:
            await c.close()
        raise
    target = spec.target
    try:
        await _probe(spec, clients[0])
    except BenchError:
        for c in clients:
            await c.close()
        raise
    callers = spec.connections * spec.concurrency
    issued = 0
    warm = 0
    budget = math.inf if spec.calls is None else spec.calls
    deadline = math.inf

    async def one_call(client: Client) -> bool:
        try:
            await client.call(target.wire_id, target.request)
            return True
        except RpcError as exc:
            key = str(exc.status)
        except ConnectionLost:
            key = "connection_lost"
        result.errors[key] = result.errors.get(key, 0) + 1
        return False

    # Warm-up: not recorded, closed loop.
    async def warm_caller(client: Client) -> None:
        nonlocal warm
        while warm < spec.warmup:
            warm += 1
            await one_call(client)

    await asyncio.gather(*(warm_caller(clients[i % len(clients)]) for i in range(callers)))
    result.errors.clear()

    recorder = result.recorder
    interval = callers / spec.rate if spec.rate else 0.0

    async def caller(index: int, client: Client) -> None:
        nonlocal issued
        loop_time = time.perf_counter
        intended = start + (interval * index / callers if interval else 0.0)
        while issued < budget and loop_time() < deadline:
            issued += 1
            if interval:
                t0 = loop_time()
                if t0 < intended:
                    # Idle until the schedule says go. The timer may fire a little early
                    # or late (uvloop: 1 ms ticks): that is the generator, not the
                    # server, so the clock starts when the call really leaves.
                    await asyncio.sleep(intended - t0)
                    t0 = loop_time()
                else:
                    # Behind schedule because the previous call was slow: count from
                    # when this one should have left (coordinated omission corrected).
                    t0 = intended
                intended += interval
            else:
                t0 = loop_time()
            ok = await one_call(client)
            if ok:
                recorder.record(int((loop_time() - t0) * 1e6))
                result.calls += 1

    start = time.perf_counter()
    if spec.duration is not None:
        deadline = start + spec.duration
    progress = asyncio.create_task(_progress(spec, result, start)) if spec.progress else None
    await asyncio.gather(*(caller(i, clients[i % len(clients)]) for i in range(callers)))
    result.elapsed = time.perf_counter() - start
    if progress is not None:
        progress.cancel()
        print(file=sys.stderr)
    for c in clients:
        await c.close()
    return result


async def run_stream_load(spec: LoadSpec) -> BenchResult:
    """Server streams: ``connections x concurrency`` readers, each opening a stream with
    the request, reading it to its end and opening the next. The run stops after
    ``spec.messages`` messages or ``spec.duration`` seconds (streams still open then are
    cancelled), or when no message arrived for ``spec.timeout`` seconds (a stalled
    server: counted as the error ``stalled``). Records the latency from opening each
    stream to its first message."""
    result = BenchResult()
    clients = [Client(spec.host, spec.port, timeout=spec.timeout) for _ in range(spec.connections)]
    try:
        for c in clients:
            await _connect(c, spec.timeout)
        await _probe_stream(spec, clients[0])
    except BaseException:
        for c in clients:
            await c.close()
        raise
    target = spec.target
    budget = math.inf if spec.messages is None else spec.messages
    stop = asyncio.Event()
    recorder = result.recorder
    clock = time.perf_counter

    async def reader(client: Client) -> None:
        while not stop.is_set():
            t0 = clock()
            first = True
            try:
                async for message in client.server_stream(target.wire_id, target.request):
                    if first:
                        recorder.record(int((clock() - t0) * 1e6))
                        first = False
                    result.messages += 1
                    result.message_bytes += len(message)
                    if result.messages >= budget:
                        stop.set()
                    if stop.is_set():
                        break  # cancels the stream on the server
                else:
                    result.calls += 1
            except RpcError as exc:
                key = str(exc.status)
                result.errors[key] = result.errors.get(key, 0) + 1
            except ConnectionLost:
                result.errors["connection_lost"] = result.errors.get("connection_lost", 0) + 1
                stop.set()

    async def watchdog() -> None:
        seen = -1
        while not stop.is_set():
            if result.messages == seen:
                result.errors["stalled"] = result.errors.get("stalled", 0) + 1
                break
            seen = result.messages
            await asyncio.sleep(spec.timeout)
        stop.set()

    start = clock()
    readers = [
        asyncio.create_task(reader(clients[i % len(clients)]))
        for i in range(spec.connections * spec.concurrency)
    ]
    guards = [asyncio.create_task(watchdog())]
    if spec.duration is not None:
        guards.append(asyncio.create_task(_stop_after(stop, spec.duration)))
    if spec.progress:
        guards.append(asyncio.create_task(_progress(spec, result, start)))
    done = asyncio.create_task(stop.wait())
    await asyncio.wait([done, *readers], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    # A reader blocked on a silent stream wakes only when its stream is cancelled:
    # closing the clients ends every stream on them.
    result.elapsed = clock() - start
    await asyncio.wait(readers, timeout=0.5)
    for c in clients:
        await c.close()
    for task in [*readers, *guards]:
        task.cancel()
    await asyncio.gather(*readers, *guards, done, return_exceptions=True)
    if spec.progress:
        print(file=sys.stderr)
    return result


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()


async def _probe_stream(spec: LoadSpec, client: Client) -> None:
    """One stream before the load (its first message, then cancelled): a missing method
    or a peer that does not speak smf stops the run with a clear message."""
    address = f"{spec.host}:{spec.port}"
    try:
        async for _ in client.server_stream(
            spec.target.wire_id, spec.target.request, timeout=spec.timeout
        ):
            break
    except NotFound as exc:
        raise BenchError(
            f"{spec.target.method} (wire id {spec.target.wire_id}): no such streaming method "
            f"on the server at {address} (404{': ' + exc.message if exc.message else ''})"
        ) from exc
    except (DeadlineExceeded, ConnectionLost) as exc:
        raise BenchError(
            f"{address} sent no stream message within --timeout ({spec.timeout:g}s): "
            f"is it an smf server serving {spec.target.method}? ({exc})"
        ) from exc
    except RpcError:
        pass  # the peer speaks smf; the run counts its error statuses


async def _connect(client: Client, timeout: float) -> None:
    """Connect, retrying a refused connection for up to ``timeout``: a server started
    in the background a moment ago (``server &`` then ``smf bench``) is still booting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await client.connect()
            return
        except ConnectionLost as exc:
            if loop.time() + 0.1 >= deadline:
                raise BenchError(f"{exc} (tried for {timeout:g}s: --timeout)") from exc
        await asyncio.sleep(0.1)


async def _probe(spec: LoadSpec, client: Client) -> None:
    """One call before the load: a peer that does not speak smf, or lacks the method,
    stops the run at once with a clear message instead of failing every call."""
    address = f"{spec.host}:{spec.port}"
    try:
        await client.call(spec.target.wire_id, spec.target.request, timeout=spec.timeout)
    except NotFound as exc:
        raise BenchError(
            f"{spec.target.method} (wire id {spec.target.wire_id}): no such method on the "
            f"server at {address} (404{': ' + exc.message if exc.message else ''})"
        ) from exc
    except (DeadlineExceeded, ConnectionLost) as exc:
        raise BenchError(
            f"{address} sent no valid smf frame within the first call's timeout "
            f"({spec.timeout:g}s; --timeout): is it an smf server? ({exc})"
        ) from exc
    except RpcError:
        pass  # the peer speaks smf; the run counts its error statuses


async def _progress(spec: LoadSpec, result: BenchResult, start: float) -> None:
    width = 30
    while True:
        await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - start
        if spec.duration:
            frac = min(1.0, elapsed / spec.duration)
        elif spec.messages:
            frac = min(1.0, result.messages / spec.messages)
        elif spec.calls:
            frac = min(1.0, result.calls / spec.calls)
        else:
            frac = 0.0
        bar = "#" * int(frac * width)
        print(
            f"\r[{bar:<{width}}] {frac * 100:5.1f}%  {result.calls} calls  "
            f"{result.calls / max(elapsed, 1e-9):,.0f}/s",
            end="",
            file=sys.stderr,
            flush=True,
        )


# --------------------------------------------------------------------------- output


def _errors_line(result: BenchResult) -> str:
    if not result.errors:
        return "  errors     none"
    return "  errors     " + ", ".join(
        f"{k}: {v}" + (f" ({STATUS_MEANING[k]})" if k in STATUS_MEANING else "")
        for k, v in result.errors.items()
    )


def format_stream_table(spec: LoadSpec, result: BenchResult) -> str:
    lines = [
        f"{spec.target.method} (server stream) on {spec.host}:{spec.port}: "
        f"{spec.connections} connection(s) x {spec.concurrency} streams open, "
        f"{len(spec.target.request)}-byte request",
        "",
        "  first message  latency (us)",
    ]
    for key, value in result.latency_us().items():
        lines.append(f"  {key:<10} {value:>14,.0f}")
    lines += [
        "",
        f"  streams    {result.calls:>14,}  (ended by the server)",
        f"  messages   {result.messages:>14,}",
        f"  elapsed    {result.elapsed:>13.2f}s",
        f"  msgs/s     {result.messages_per_s:>14,.0f}",
        f"  MB/s       {result.mb_per_s:>14,.2f}",
        _errors_line(result),
    ]
    return "\n".join(lines)


def format_table(spec: LoadSpec, result: BenchResult) -> str:
    if spec.target.streaming == "server":
        return format_stream_table(spec, result)
    lat = result.latency_us()
    mode = f"open loop at {spec.rate:g}/s" if spec.rate else "closed loop"
    lines = [
        f"{spec.target.method} on {spec.host}:{spec.port}: {spec.connections} connection(s) x "
        f"{spec.concurrency} in flight, {mode}, {len(spec.target.request)}-byte request",
        "",
        "  percentile   latency (us)",
    ]
    for key, value in lat.items():
        lines.append(f"  {key:<10} {value:>14,.0f}")
    lines += [
        "",
        f"  calls      {result.calls:>14,}",
        f"  elapsed    {result.elapsed:>13.2f}s",
        f"  calls/s    {result.calls_per_s:>14,.0f}",
    ]
    if result.errors:
        lines.append(
            "  errors     "
            + ", ".join(
                f"{k}: {v}" + (f" ({STATUS_MEANING[k]})" if k in STATUS_MEANING else "")
                for k, v in result.errors.items()
            )
        )
    else:
        lines.append("  errors     none")
    return "\n".join(lines)


def write_hgrm(result: BenchResult, path: Path) -> None:
    with path.open("wb") as out:
        result.histogram().output_percentile_distribution(out, 1.0)


# --------------------------------------------------------------------------- CLI


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smf bench",
        description="Load one RPC method and report latency percentiles.",
    )
    p.add_argument("address", type=_address, metavar="HOST:PORT")
    p.add_argument("--schema", type=Path, required=True, help="FlatBuffers schema (.fbs)")
    p.add_argument("-I", dest="include", type=Path, action="append", default=[])
    p.add_argument("--method", required=True, help="Service.Method")
    p.add_argument("--data", required=True, help="request as JSON, or @file.json")
    p.add_argument("--connections", type=_positive(int), default=1)
    p.add_argument("--concurrency", type=_positive(int), default=1, help="in flight per conn")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--calls", type=_positive(int), help="total calls (default 10000)")
    group.add_argument("--duration", type=_positive(float), help="seconds to run")
    group.add_argument(
        "--messages",
        type=_positive(int),
        help="server-streaming methods: total messages (default 100000)",
    )
    p.add_argument("--warmup", type=int, default=0, help="unrecorded calls first")
    p.add_argument("--rate", type=_positive(float), help="open loop: calls per second")
    p.add_argument("--timeout", type=_positive(float), default=10.0, help="per call (s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--hgrm", type=Path, help="write HDR percentile distribution here")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data: str = args.data
    try:
        if data.startswith("@"):
            try:
                data = Path(data[1:]).read_text()
            except OSError as exc:
                raise BenchError(f"--data {args.data}: {exc.strerror}") from exc
        target = resolve_target(args.schema, args.method, data, args.include)
        host, port = args.address
        long_run = (args.duration or 0) > 3 or (args.calls or 0) > 50_000
        streaming = target.streaming == "server"
        if streaming and args.calls:
            raise BenchError("--calls: a server-streaming method runs for --messages or --duration")
        if not streaming and args.messages:
            raise BenchError(f"--messages: {target.method} is not a server-streaming method")
        spec = LoadSpec(
            host=host,
            port=port,
            target=target,
            connections=args.connections,
            concurrency=args.concurrency,
            calls=None if args.duration else (args.calls or 10_000),
            duration=args.duration,
            messages=(args.messages or (None if args.duration else 100_000)) if streaming else None,
            warmup=args.warmup,
            rate=args.rate,
            timeout=args.timeout,
            progress=(
                args.progress
                if args.progress is not None
                else long_run and sys.stderr.isatty() and not args.json
            ),
        )
        result = run(run_load(spec))
    except BenchError as exc:
        print(f"smf bench: error: {exc}", file=sys.stderr)
        return 2
    if args.hgrm:
        write_hgrm(result, args.hgrm)
    for warning in result.warnings(spec):
        print(f"smf bench: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(spec)))
    else:
        print(format_table(spec, result))
    return 0 if not result.errors else 1
