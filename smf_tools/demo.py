"""``smf demo``: the whole workflow in one command.

1. ``smfc`` generates typed stubs from ``demo.fbs`` (the real flatc parses it);
2. the demo server serves ``SmfStorage`` from those stubs, in its own process;
3. ``smf bench`` loads ``SmfStorage.Get`` sequentially, then with 64 calls in flight,
   and prints the latency percentiles.

The schema and the server ship inside this package (``smf_tools/data/``: copies of the
checkout's ``idl/demo.fbs`` and ``examples/demo/server.py``, kept identical by a test), so
the demo runs the same from an installed package and from a checkout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smf.loop import run

from .bench import BenchError, LoadSpec, format_table, resolve_target, run_load

DATA = Path(__file__).resolve().parent / "data"
SCHEMA = DATA / "demo.fbs"
SERVER = DATA / "demo_server.py"
REQUEST = {"name": "a sixty-byte request: the payload of smf's own latency demo.."}


def _start_server(stubs: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0", "--stubs", str(stubs)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "SmfStorage listening on 127.0.0.1:PORT"
    if "listening on" not in line:
        proc.kill()
        raise BenchError(f"demo server did not start (said {line!r})")
    return proc, int(line.rsplit(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smf demo", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per phase")
    args = parser.parse_args(argv)
    if not SCHEMA.exists() or not SERVER.exists():
        print(f"smf demo: {DATA} is incomplete: reinstall smf", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="smf-demo-") as tmp:
        stubs = Path(tmp) / "stubs"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "smfc", "-o", str(stubs), str(SCHEMA)],
            check=True,
        )
        files = sorted(p.relative_to(stubs) for p in stubs.rglob("*.py*"))
        print(f"1. smfc {SCHEMA.name} -> {len(files)} files in "
              f"{(time.perf_counter() - t0) * 1e3:.0f} ms: "
              + ", ".join(str(f) for f in files if f.name.endswith("_smf.py")))  # fmt: skip
        proc, port = _start_server(stubs)
        print(f"2. the demo server (pid {proc.pid}) serves SmfStorage on 127.0.0.1:{port}")
        try:
            target = resolve_target(SCHEMA, "SmfStorage.Get", json.dumps(REQUEST))
            print(f"3. smf bench 127.0.0.1:{port} --schema {SCHEMA} --method SmfStorage.Get")
            for connections, concurrency in ((1, 1), (1, 64)):
                spec = LoadSpec(
                    host="127.0.0.1",
                    port=port,
                    target=target,
                    connections=connections,
                    concurrency=concurrency,
                    calls=args.calls,
                    warmup=2000,
                )
                result = run(run_load(spec))
                print()
                print(format_table(spec, result))
        except BenchError as exc:
            print(f"smf demo: {exc}", file=sys.stderr)
            return 1
        finally:
            proc.terminate()
            proc.wait(10)
    print("\nnext: `smf bench --help`; the repository's bench/ compares smf with grpc.aio "
          "and a raw socket")  # fmt: skip
    return 0
