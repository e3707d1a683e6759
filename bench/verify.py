"""What the generated FlatBuffers verifiers cost, against reading the same buffer.

Run from the repository root::

    python bench/verify.py            # table
    python bench/verify.py --json     # machine-readable
    python bench/verify.py --repeats 9 --min-time 0.5

smfc generates the stubs of ``idl/demo.fbs`` and ``idl/broker.fbs`` into a temporary
directory first, so the verifiers measured are those the current code generator writes.

Messages (each a finished buffer, as a server receives it, over a ``memoryview``):

* **demo Request**: ``smf_gen.demo.Request`` with a 60-byte ``name`` (88 bytes).
* **FetchReply xN**: ``broker.FetchReply`` with two strings and N ``Record`` tables, each
  a ulong, a uint and a 100-byte ``[ubyte]`` (a vector of N tables).

For each message:

* **verify**: ``Verifier(body).root(verify_T)``, what a generated handler runs before
  the method (``verify=True``, the default).
* **read**: ``T.GetRootAs(body, 0)`` and every field through the generated accessors
  (``[ubyte]`` as one slice of the buffer, as ``examples/broker/codec.py`` does): what a
  method that uses the whole request pays anyway.
* **check_root**: the root-offset check a handler runs instead with ``verify=False``.

Each figure is the best over ``--repeats`` of the mean time per call of a timed loop
(``timeit``, at least ``--min-time`` seconds per repeat); the ratio is verify / read.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flatbuffers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smf.verify import Verifier  # noqa: E402
from smfc.generate import generate  # noqa: E402


def _time(fn: Callable[[], object], repeats: int, min_time: float) -> float:
    """The best over ``repeats`` of the mean seconds per call (timeit's advice: slower
    repeats measure other processes, not ``fn``)."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    per_run = max(number, int(number * min_time / 0.2))
    return min(timer.repeat(repeats, per_run)) / per_run


def _finish(builder: Any, root: int) -> memoryview:
    builder.Finish(root)
    return memoryview(bytearray(builder.Output()))


def demo_case(load: Callable[[str], Any]) -> tuple[memoryview, Any, Callable[[memoryview], Any]]:
    stub = load("smf_gen.demo.SmfStorage_smf")
    request = load("smf_gen.demo.Request")
    builder = flatbuffers.Builder(128)
    body = _finish(builder, request.RequestT(name="n" * 60).Pack(builder))

    def read(buf: memoryview) -> Any:
        return request.Request.GetRootAs(buf, 0).Name()

    return body, stub.verify_Request, read


def fetch_case(
    load: Callable[[str], Any], records: int
) -> tuple[memoryview, Any, Callable[[memoryview], Any]]:
    stub = load("broker.Data_smf")
    reply = load("broker.FetchReply")
    record = load("broker.Record")
    builder = flatbuffers.Builder(1024)
    offsets = []
    for i in range(records):
        value = builder.CreateByteVector(bytes(range(100)))
        record.RecordStart(builder)
        record.RecordAddOffset(builder, 1000 + i)
        record.RecordAddCrc(builder, 0xDEADBEEF)
        record.RecordAddValue(builder, value)
        offsets.append(record.RecordEnd(builder))
    reply.FetchReplyStartRecordsVector(builder, records)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    vector = builder.EndVector()
    error = builder.CreateString("")
    leader = builder.CreateString("127.0.0.1:9001")
    reply.FetchReplyStart(builder)
    reply.FetchReplyAddError(builder, error)
    reply.FetchReplyAddLeaderAddress(builder, leader)
    reply.FetchReplyAddRecords(builder, vector)
    reply.FetchReplyAddHighWatermark(builder, 1000 + records)
    body = _finish(builder, reply.FetchReplyEnd(builder))

    def read(buf: memoryview) -> Any:
        table = reply.FetchReply.GetRootAs(buf, 0)
        out = [table.Error(), table.LeaderAddress(), table.HighWatermark()]
        for i in range(table.RecordsLength()):
            r = table.Records(i)
            out.append((r.Offset(), r.Crc(), bytes(r.ValueAsBytes())))
        return out

    return body, stub.verify_FetchReply, read


def check_root(body: memoryview) -> memoryview:
    """The generated ``_check_root`` (what ``verify=False`` leaves)."""
    if body.nbytes < 8 or int.from_bytes(body[:4], "little") > body.nbytes - 4:
        raise ValueError("not a FlatBuffer")
    return body


def measure(
    name: str,
    body: memoryview,
    verify: Any,
    read: Callable[[memoryview], Any],
    repeats: int,
    min_time: float,
) -> dict[str, Any]:
    Verifier(body).root(verify)  # valid, and warm
    read(body)
    t_verify = _time(lambda: Verifier(body).root(verify), repeats, min_time)
    t_read = _time(lambda: read(body), repeats, min_time)
    t_check = _time(lambda: check_root(body), repeats, min_time)
    return {
        "message": name,
        "bytes": body.nbytes,
        "verify_us": t_verify * 1e6,
        "read_us": t_read * 1e6,
        "check_root_us": t_check * 1e6,
        "verify_over_read": t_verify / t_read,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="smf-bench-verify-") as tmp:
        out = Path(tmp)
        generate([ROOT / "idl" / "demo.fbs"], out)
        generate([ROOT / "idl" / "broker.fbs"], out)
        sys.path.insert(0, str(out))
        load = importlib.import_module
        cases = [("demo Request", *demo_case(load))]
        cases += [(f"FetchReply x{n}", *fetch_case(load, n)) for n in (10, 100)]
        rows = [measure(name, *case, args.repeats, args.min_time) for name, *case in cases]
    if args.json:
        info = {"python": platform.python_version(), "machine": platform.machine()}
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return 0
    print(f"Python {platform.python_version()}, best of {args.repeats} repeats, µs per call")
    head = ("message", "bytes", "verify", "read", "verify/read", "check_root")
    print("{:<16} {:>6} {:>9} {:>9} {:>12} {:>11}".format(*head))
    for r in rows:
        print(
            f"{r['message']:<16} {r['bytes']:>6} {r['verify_us']:>9.2f} {r['read_us']:>9.2f} "
            f"{r['verify_over_read']:>11.2f}x {r['check_root_us']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
