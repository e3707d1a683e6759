"""Codec benchmark: smfc's generated codec against flatc's Python code and protobuf (upb).

Run from the repository root::

    python bench/codec.py               # ~1 min: a markdown table on stdout
    python bench/codec.py --quick       # a few seconds, for smoke tests (numbers are noise)

Everything is generated at run time into a temporary directory: smfc's modules (what
the stubs use), flatc's own Python modules (``flatc --python --gen-object-api``, the
baseline: accessors, object API, ``flatbuffers.Builder``) and protobuf classes
(``grpc_tools.protoc`` from an equivalent .proto). Three messages:

* **Response**: the demo reply, a 60-byte name.
* **AppendBatch**: ``idl/broker.fbs``'s replication batch, one AppendRequest with 16
  LogEntry of 1 KiB (``[ubyte]``) and 3 AppendResponses.
* **Tree**: 16 nodes x 4 children with names and 6 doubles each (~7 KB).

Per message: **encode** (smfc ``XT.Encode()``; flatc object API ``Pack`` into a
``Builder`` + ``Output()``, and for AppendBatch also a hand-written Builder with
``CreateByteVector``; protobuf ``SerializeToString``), **read** (``GetRootAs`` and every
field through the accessors; protobuf ``ParseFromString`` and every field), **decode +
encode** through the object API (``XT.InitFromObj(X.GetRootAs(buf))`` then encode), and
the **verifier** on the nested message (as smfc encodes it and as a ``flatbuffers.Builder``
packs it). Candidates are interleaved, best of the repeats
(µs per message); ratios are baseline / smfc from the same run.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TREE_FBS = """\
namespace benchtree;
table Child { name: string; values: [double]; id: long; }
table Node { name: string; children: [Child]; weight: double; }
table Tree { nodes: [Node]; }
rpc_service TreeService { Echo(Tree): Tree; }
"""

PROTO = """\
syntax = "proto3";
package benchpb;
message Response { string name = 1; }
message LogEntry { uint64 term = 1; uint64 index = 2; uint32 kind = 3; bytes data = 4; }
message AppendRequest {
  uint64 group = 1; uint64 term = 2; int32 src = 3; int32 dst = 4;
  uint64 prev_index = 5; uint64 prev_term = 6; repeated LogEntry entries = 7;
  uint64 leader_commit = 8;
}
message AppendResponse {
  uint64 group = 1; uint64 term = 2; int32 src = 3; int32 dst = 4;
  bool success = 5; uint64 match_index = 6; uint64 reject_hint = 7;
}
message AppendBatch { repeated AppendRequest requests = 1; repeated AppendResponse responses = 2; }
message Child { string name = 1; repeated double values = 2; int64 id = 3; }
message Node { string name = 1; repeated Child children = 2; double weight = 3; }
message Tree { repeated Node nodes = 1; }
"""

PACKAGES = ("smf_gen", "broker", "benchtree")


class Generated:
    """smfc's, flatc's and protobuf's code for the three messages, in a temp dir."""

    def __init__(self, work: Path, build: bool = True) -> None:
        """Generate everything into ``work`` (``build=False``: it is there already, as
        for the child processes of bench/nested.py), then import it."""
        if build:
            self.build(work)
        ours, theirs = work / "ours", work / "theirs"
        sys.path[:0] = [str(ours), str(theirs), str(work)]
        importlib.invalidate_caches()
        flatc_modules = [
            importlib.import_module(
                p.relative_to(theirs).with_suffix("").as_posix().replace("/", ".")
            )
            for p in theirs.rglob("*.py")
            if p.name != "__init__.py"
        ]
        # flatc's object API uses names it never imports: give each module its siblings'.
        names = {k: v for m in flatc_modules for k, v in vars(m).items() if k[:1].isupper()}
        for module in flatc_modules:
            for k, v in names.items():
                vars(module).setdefault(k, v)
        self.pb: Any = importlib.import_module("bench_pb2")

    @staticmethod
    def build(work: Path) -> None:
        from smfc.flatc import find_flatc
        from smfc.generate import generate

        (work / "tree.fbs").write_text(TREE_FBS)
        schemas = [REPO / "idl" / "demo.fbs", REPO / "idl" / "broker.fbs", work / "tree.fbs"]
        ours = work / "ours"
        for schema in schemas:
            generate([schema], ours)
        theirs = work / "theirs"
        flatc = find_flatc()
        for schema in schemas:
            subprocess.run(
                [flatc, "--python", "--gen-object-api", "-o", str(theirs), str(schema)],
                check=True,
                capture_output=True,
            )
        for package in PACKAGES:  # flatc's modules as flatc_<package>, next to smfc's
            (theirs / package).rename(theirs / f"flatc_{package}")
        for path in theirs.rglob("*.py"):
            text = re.sub(rf"\b({'|'.join(PACKAGES)})\.", r"flatc_\1.", path.read_text())
            path.write_text(text)
        (work / "bench.proto").write_text(PROTO)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{work}",
                f"--python_out={work}",
                str(work / "bench.proto"),
            ],
            check=True,
            capture_output=True,
        )

    @staticmethod
    def ours(qualified: str, suffix: str = "") -> Any:
        return _cls(qualified, suffix)

    @staticmethod
    def theirs(qualified: str, suffix: str = "") -> Any:
        return _cls("flatc_" + qualified, suffix)


def _cls(qualified: str, suffix: str) -> Any:
    module: ModuleType = importlib.import_module(qualified)
    return getattr(module, qualified.rpartition(".")[2] + suffix)


# ----------------------------------------------------------------------------- timing


def best_us(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


class Row:
    def __init__(self, message: str, operation: str, candidates: dict[str, Callable[[], object]]):
        self.message = message
        self.operation = operation
        self.candidates = candidates
        self.best: dict[str, float] = {}


def measure(rows: list[Row], repeats: int, budget: float) -> None:
    """Interleave every candidate of every row, ``repeats`` times; keep the best."""
    for row in rows:
        for name, fn in row.candidates.items():
            fn()  # warm up (and fail early)
            start = time.perf_counter()
            fn()
            once = max(time.perf_counter() - start, 1e-7)
            row.best[name] = float("inf")
            row.candidates[name] = fn
            fn._number = max(1, int(budget / once))
    for _ in range(repeats):
        for row in rows:
            for name, fn in row.candidates.items():
                row.best[name] = min(row.best[name], best_us(fn, fn._number))  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- workloads


def response_rows(g: Generated) -> list[Row]:
    name = "x" * 60
    ResponseT = g.ours("smf_gen.demo.Response", "T")
    Response = g.ours("smf_gen.demo.Response")
    FResponseT = g.theirs("smf_gen.demo.Response", "T")
    FResponse = g.theirs("smf_gen.demo.Response")
    import flatbuffers

    def flatc_encode() -> bytes:
        b = flatbuffers.Builder(128)
        b.Finish(FResponseT(name=name).Pack(b))
        return bytes(b.Output())

    buf = bytes(ResponseT(name=name).Encode())
    pb = g.pb.Response(name=name)
    pb_bytes = pb.SerializeToString()
    return [
        Row(
            "Response (60 B name)",
            "encode",
            {
                "smfc": lambda: ResponseT(name=name).Encode(),
                "flatc": flatc_encode,
                "protobuf": lambda: g.pb.Response(name=name).SerializeToString(),
            },
        ),
        Row(
            "Response (60 B name)",
            "read (GetRootAs + Name())",
            {
                "smfc": lambda: Response.GetRootAs(buf, 0).Name(),
                "flatc": lambda: FResponse.GetRootAs(buf, 0).Name(),
                "protobuf": lambda: g.pb.Response.FromString(pb_bytes).name,
            },
        ),
    ]


def append_rows(g: Generated) -> list[Row]:
    import flatbuffers

    data = bytes(range(256)) * 4

    def ours_message() -> Any:
        return g.ours("broker.AppendBatch", "T")(
            requests=[
                g.ours("broker.AppendRequest", "T")(
                    group=7,
                    term=3,
                    src=1,
                    dst=2,
                    prevIndex=99,
                    prevTerm=3,
                    entries=[
                        g.ours("broker.LogEntry", "T")(term=3, index=100 + i, kind=0, data=data)
                        for i in range(16)
                    ],
                    leaderCommit=98,
                )
            ],
            responses=[
                g.ours("broker.AppendResponse", "T")(
                    group=7 + i, term=3, src=1, dst=2, success=True, matchIndex=5, rejectHint=0
                )
                for i in range(3)
            ],
        )

    LogEntryT = g.ours("broker.LogEntry", "T")
    AppendRequestT = g.ours("broker.AppendRequest", "T")
    AppendResponseT = g.ours("broker.AppendResponse", "T")
    AppendBatchT = g.ours("broker.AppendBatch", "T")

    def ours_encode() -> bytearray:
        encoded: bytearray = AppendBatchT(
            requests=[
                AppendRequestT(
                    group=7,
                    term=3,
                    src=1,
                    dst=2,
                    prevIndex=99,
                    prevTerm=3,
                    entries=[
                        LogEntryT(term=3, index=100 + i, kind=0, data=data) for i in range(16)
                    ],
                    leaderCommit=98,
                )
            ],
            responses=[
                AppendResponseT(
                    group=7 + i, term=3, src=1, dst=2, success=True, matchIndex=5, rejectHint=0
                )
                for i in range(3)
            ],
        ).Encode()
        return encoded

    fmod = {
        n: importlib.import_module(f"flatc_broker.{n}")
        for n in ("LogEntry", "AppendRequest", "AppendResponse", "AppendBatch")
    }

    def builder_encode() -> bytes:
        """By hand with flatc's builder functions, payloads with CreateByteVector."""
        b = flatbuffers.Builder(20000)
        le, ar, rs, ab = (
            fmod[n] for n in ("LogEntry", "AppendRequest", "AppendResponse", "AppendBatch")
        )
        offs = []
        for i in range(16):
            d = b.CreateByteVector(data)
            le.LogEntryStart(b)
            le.LogEntryAddTerm(b, 3)
            le.LogEntryAddIndex(b, 100 + i)
            le.LogEntryAddData(b, d)
            offs.append(le.LogEntryEnd(b))
        ar.AppendRequestStartEntriesVector(b, 16)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        entries = b.EndVector()
        ar.AppendRequestStart(b)
        ar.AppendRequestAddGroup(b, 7)
        ar.AppendRequestAddTerm(b, 3)
        ar.AppendRequestAddSrc(b, 1)
        ar.AppendRequestAddDst(b, 2)
        ar.AppendRequestAddPrevIndex(b, 99)
        ar.AppendRequestAddPrevTerm(b, 3)
        ar.AppendRequestAddEntries(b, entries)
        ar.AppendRequestAddLeaderCommit(b, 98)
        req = ar.AppendRequestEnd(b)
        resp = []
        for i in range(3):
            rs.AppendResponseStart(b)
            rs.AppendResponseAddGroup(b, 7 + i)
            rs.AppendResponseAddTerm(b, 3)
            rs.AppendResponseAddSrc(b, 1)
            rs.AppendResponseAddDst(b, 2)
            rs.AppendResponseAddSuccess(b, True)
            rs.AppendResponseAddMatchIndex(b, 5)
            resp.append(rs.AppendResponseEnd(b))
        ab.AppendBatchStartRequestsVector(b, 1)
        b.PrependUOffsetTRelative(req)
        reqs = b.EndVector()
        ab.AppendBatchStartResponsesVector(b, 3)
        for o in reversed(resp):
            b.PrependUOffsetTRelative(o)
        resps = b.EndVector()
        ab.AppendBatchStart(b)
        ab.AppendBatchAddRequests(b, reqs)
        ab.AppendBatchAddResponses(b, resps)
        b.Finish(ab.AppendBatchEnd(b))
        return bytes(b.Output())

    buf = bytes(ours_message().Encode())
    FBatchT = g.theirs("broker.AppendBatch", "T")
    FBatch = g.theirs("broker.AppendBatch")
    flatc_obj = FBatchT.InitFromObj(FBatch.GetRootAs(buf, 0))

    def flatc_pack() -> bytes:
        b = flatbuffers.Builder(20000)
        b.Finish(flatc_obj.Pack(b))
        return bytes(b.Output())

    pb = g.pb

    def pb_encode() -> bytes:
        m = pb.AppendBatch(
            requests=[
                pb.AppendRequest(
                    group=7,
                    term=3,
                    src=1,
                    dst=2,
                    prev_index=99,
                    prev_term=3,
                    entries=[
                        pb.LogEntry(term=3, index=100 + i, kind=0, data=data) for i in range(16)
                    ],
                    leader_commit=98,
                )
            ],
            responses=[
                pb.AppendResponse(group=7 + i, term=3, src=1, dst=2, success=True, match_index=5)
                for i in range(3)
            ],
        )
        out: bytes = m.SerializeToString()
        return out

    pb_bytes = pb_encode()
    Batch = g.ours("broker.AppendBatch")

    def ours_read() -> int:
        total = 0
        batch = Batch.GetRootAs(buf, 0)
        for i in range(batch.RequestsLength()):
            r = batch.Requests(i)
            total += r.Group() + r.Term() + r.Src() + r.Dst() + r.PrevIndex() + r.PrevTerm()
            for j in range(r.EntriesLength()):
                e = r.Entries(j)
                total += e.Term() + e.Index() + e.Kind() + len(bytes(e.DataAsBytes()))
        for i in range(batch.ResponsesLength()):
            s = batch.Responses(i)
            total += s.Group() + s.MatchIndex() + s.Success()
        return total

    def flatc_read() -> int:
        total = 0
        batch = FBatch.GetRootAs(buf, 0)
        for i in range(batch.RequestsLength()):
            r = batch.Requests(i)
            total += r.Group() + r.Term() + r.Src() + r.Dst() + r.PrevIndex() + r.PrevTerm()
            for j in range(r.EntriesLength()):
                e = r.Entries(j)
                total += e.Term() + e.Index() + e.Kind() + len(e.DataAsNumpy().tobytes())
        for i in range(batch.ResponsesLength()):
            s = batch.Responses(i)
            total += s.Group() + s.MatchIndex() + s.Success()
        return total

    def pb_read() -> int:
        total = 0
        batch = pb.AppendBatch.FromString(pb_bytes)
        for r in batch.requests:
            total += r.group + r.term + r.src + r.dst + r.prev_index + r.prev_term
            for e in r.entries:
                total += e.term + e.index + e.kind + len(e.data)
        for s in batch.responses:
            total += s.group + s.match_index + s.success
        return total

    label = f"AppendBatch ({len(buf) / 1000:.1f} kB)"
    return [
        Row(label, "encode", {"smfc": ours_encode, "flatc": builder_encode, "protobuf": pb_encode}),
        Row(label, "encode, flatc = object API Pack", {"smfc": ours_encode, "flatc": flatc_pack}),
        Row(
            label, "read every field", {"smfc": ours_read, "flatc": flatc_read, "protobuf": pb_read}
        ),
    ]


def tree_rows(g: Generated) -> tuple[list[Row], bytes]:
    import flatbuffers

    ChildT = g.ours("benchtree.Child", "T")
    NodeT = g.ours("benchtree.Node", "T")
    TreeT = g.ours("benchtree.Tree", "T")
    tree = TreeT(
        nodes=[
            NodeT(
                name=f"node-{i:03d}",
                weight=i * 0.5,
                children=[
                    ChildT(
                        name=f"child-{i:03d}-{j}",
                        values=[i * j + k * 0.25 for k in range(6)],
                        id=i * 4 + j,
                    )
                    for j in range(4)
                ],
            )
            for i in range(16)
        ]
    )
    buf = bytes(tree.Encode())
    Tree = g.ours("benchtree.Tree")
    FTree = g.theirs("benchtree.Tree")
    FTreeT = g.theirs("benchtree.Tree", "T")

    def ours_round() -> bytearray:
        encoded: bytearray = TreeT.InitFromObj(Tree.GetRootAs(buf, 0)).Encode()
        return encoded

    def flatc_round() -> bytes:
        obj = FTreeT.InitFromObj(FTree.GetRootAs(buf, 0))
        b = flatbuffers.Builder(8192)
        b.Finish(obj.Pack(b))
        return bytes(b.Output())

    pb = g.pb
    pbt = pb.Tree()
    for i in range(16):
        n = pbt.nodes.add(name=f"node-{i:03d}", weight=i * 0.5)
        for j in range(4):
            n.children.add(
                name=f"child-{i:03d}-{j}", values=[i * j + k * 0.25 for k in range(6)], id=i * 4 + j
            )
    pb_bytes = pbt.SerializeToString()

    def read_all(t: Any, numpy: bool) -> float:
        total = 0.0
        for i in range(t.NodesLength()):
            n = t.Nodes(i)
            total += len(n.Name()) + n.Weight()
            for j in range(n.ChildrenLength()):
                c = n.Children(j)
                total += len(c.Name()) + c.Id()
                for k in range(c.ValuesLength()):
                    total += c.Values(k)
        return total

    def pb_read() -> float:
        total = 0.0
        t = pb.Tree.FromString(pb_bytes)
        for n in t.nodes:
            total += len(n.name) + n.weight
            for c in n.children:
                total += len(c.name) + c.id + sum(c.values)
        return total

    label = f"Tree ({len(buf) / 1000:.1f} kB, 16 x 4)"
    rows = [
        Row(
            label,
            "decode + encode (object API)",
            {
                "smfc": ours_round,
                "flatc": flatc_round,
                "protobuf": lambda: pb.Tree.FromString(pb_bytes).SerializeToString(),
            },
        ),
        Row(
            label,
            "read every field",
            {
                "smfc": lambda: read_all(Tree.GetRootAs(buf, 0), False),
                "flatc": lambda: read_all(FTree.GetRootAs(buf, 0), False),
                "protobuf": pb_read,
            },
        ),
    ]
    return rows, buf


def verifier_rows(g: Generated, buf: bytes) -> list[Row]:
    """smfc's verifier (fast path, general path on faults) against the general path alone
    (one ``TableCheck`` and one call per field: the verifier before the fast path), on
    the buffer smfc's encoder wrote and on the same tree packed by a
    ``flatbuffers.Builder`` (flatc's object API), which a C++ or flatc peer would send:
    the fast path checks smfc's own layout first, any other layout after."""
    import flatbuffers

    from smf.verify import verify_buffer
    from smfc.verifiers import general_path

    module = importlib.import_module("benchtree.TreeService_smf")
    fast, slow = module.verify_Tree, general_path(module)["verify_Tree"]
    b = flatbuffers.Builder(8192)
    b.Finish(
        g.theirs("benchtree.Tree", "T")
        .InitFromObj(g.theirs("benchtree.Tree").GetRootAs(buf, 0))
        .Pack(b)
    )
    packed = bytes(b.Output())
    return [
        Row(
            f"Tree ({len(buf) / 1000:.1f} kB)",
            "verify (flatc = general path alone)",
            {"smfc": lambda: verify_buffer(buf, fast), "flatc": lambda: verify_buffer(buf, slow)},
        ),
        Row(
            f"Tree ({len(packed) / 1000:.1f} kB, from a Builder)",
            "verify (flatc = general path alone)",
            {
                "smfc": lambda: verify_buffer(packed, fast),
                "flatc": lambda: verify_buffer(packed, slow),
            },
        ),
    ]


# ----------------------------------------------------------------------------- output


def table(rows: list[Row]) -> str:
    lines = [
        "| message | operation | smfc µs | flatc µs | flatc / smfc | protobuf µs "
        "| protobuf / smfc |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = row.best["smfc"]
        cells = [row.message, row.operation, f"{ours:.2f}"]
        for other in ("flatc", "protobuf"):
            value = row.best.get(other)
            if value is None:
                cells += ["-", "-"]
            else:
                cells += [f"{value:.2f}", f"{value / ours:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    repeats, budget = (1, 0.0) if args.quick else (args.repeats, 0.15)
    work = Path(tempfile.mkdtemp(prefix="smf-bench-codec-"))
    try:
        g = Generated(work)
        rows = response_rows(g) + append_rows(g)
        more, tree_buf = tree_rows(g)
        rows += more
        rows += verifier_rows(g, tree_buf)
        measure(rows, repeats, budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from google.protobuf.internal import api_implementation

    print(
        f"python {sys.version.split()[0]}, protobuf backend {api_implementation.Type()}, "
        f"best of {repeats} interleaved repeats, µs per message\n"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
