"""Process and network harness for the broker's end-to-end and fault tests.

- :class:`Cluster` starts N real node processes (``python -m examples.broker node``) on
  free loopback ports. Unless ``proxies=False``, node *a* reaches node *b* through a TCP
  proxy of its own (``P(a->b)``, in this process), so a test can cut and heal the network
  between any two nodes: :meth:`Cluster.cut` drops the existing connections both ways and
  blackholes (accepts, never forwards) or refuses new ones; :meth:`Cluster.heal` undoes
  it. Clients talk to the nodes directly (the proxies carry node-to-node traffic only).
- Nodes can be killed (SIGKILL), stopped (SIGTERM) and restarted on the same port and data
  directory; each node's output goes to ``<root>/node-I.log`` and is kept in memory.
- :class:`Workload` produces unique values continuously from tasks and records every
  attempt (:class:`examples.broker.checker.Attempt`) for the checker.

Every wait is bounded, and :meth:`Cluster.close` (also run at interpreter exit for
anything left) kills every process it started.

The asyncio proxies run on the test's event loop: never block it (use the async helpers,
e.g. :func:`run_cli`, not ``subprocess.run``) or node-to-node traffic stalls.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "examples" / "broker" / "generated"


def _expose_generated_stubs() -> None:
    """Make ``examples`` and the generated ``broker`` package importable, however the
    tests are started (``pytest`` from anywhere, or ``bench/broker.py``).

    Should ``tests/broker`` ever be imported as a top-level package named ``broker``
    (no ``tests/__init__.py``), it would shadow the generated stubs' package of the same
    name; adding the generated directory to that package's search path lets both be
    found."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = sys.modules.get("broker")
    if module is None:
        return
    path = getattr(module, "__path__", None)
    generated = str(GENERATED / "broker")
    if path is not None and generated not in list(path):
        path.append(generated)


_expose_generated_stubs()

from examples.broker.checker import Attempt, Report, check_cluster  # noqa: E402
from examples.broker.client import (  # noqa: E402
    BrokerClient,
    BrokerError,
    ProduceError,
    format_address,
)

HOST = "127.0.0.1"
START_TIMEOUT = 20.0

_LIVE_PIDS: set[int] = set()


def _kill_leftovers() -> None:
    for pid in list(_LIVE_PIDS):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _LIVE_PIDS.clear()


atexit.register(_kill_leftovers)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- TCP proxy


class Proxy:
    """Forwards connections from ``port`` to ``target`` unless cut.

    ``mode``: "open" forwards; "blackhole" accepts and reads but never forwards or
    answers; "refuse" closes (resets) every new connection at once."""

    def __init__(self, name: str, target: tuple[str, int]) -> None:
        self.name = name
        self.target = target
        self.mode = "open"
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()  # both ends of forwarded connections
        self._held: set[asyncio.StreamWriter] = set()  # blackholed connections
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return format_address(HOST, self.port)

    def cut(self, mode: str = "blackhole") -> None:
        if mode not in ("blackhole", "refuse"):
            raise ValueError(f"mode must be blackhole or refuse, not {mode!r}")
        self.mode = mode
        self._abort(self._live)

    def heal(self) -> None:
        self.mode = "open"
        self._abort(self._held)  # their owners reconnect, through the open proxy now

    @staticmethod
    def _abort(writers: set[asyncio.StreamWriter]) -> None:
        for w in list(writers):
            w.transport.abort()
        writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        if self.mode == "blackhole":
            await self._hold(reader, writer)
            return
        try:
            async with asyncio.timeout(2.0):
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        if self.mode != "open":  # cut while connecting
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self._live.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._live.discard(w)
                w.transport.abort()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.add(writer)
        try:
            while await reader.read(65536):
                pass  # swallowed
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._held.discard(writer)
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort(self._live)
        self._abort(self._held)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


# --------------------------------------------------------------------------- node process


class NodeProcess:
    """One ``python -m examples.broker node`` process (restartable)."""

    def __init__(
        self,
        node_id: int,
        port: int,
        peers: dict[int, str],
        data_dir: Path,
        log_path: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.peers = peers
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.starts = 0
        self._listening = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return format_address(HOST, self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def argv(self) -> list[str]:
        peers = ",".join(f"{i}={a}" for i, a in sorted(self.peers.items()))
        argv = [sys.executable, "-m", "examples.broker", "node", "--id", str(self.node_id)]
        argv += ["--listen", self.address, "--data", str(self.data_dir)]
        if peers:
            argv += ["--peers", peers]
        return argv + self.extra_args

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.alive:
            raise RuntimeError(f"node {self.node_id} is already running")
        self._listening = asyncio.Event()
        self.starts += 1
        self._log(f"---- harness: start #{self.starts}: {' '.join(self.argv()[1:])}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            cwd=str(ROOT),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE_PIDS.add(self.proc.pid)
        self._reader = asyncio.get_running_loop().create_task(self._read(self.proc))
        try:
            async with asyncio.timeout(timeout):
                waiter = asyncio.ensure_future(self._listening.wait())
                exited = asyncio.ensure_future(self.proc.wait())
                try:
                    await asyncio.wait([waiter, exited], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    exited.cancel()
        except TimeoutError:
            raise RuntimeError(
                f"node {self.node_id} did not print 'listening' within {timeout}s\n" + self.tail()
            ) from None
        if not self._listening.is_set():
            await asyncio.sleep(0.1)  # let the reader drain the last lines
            raise RuntimeError(
                f"node {self.node_id} exited with {self.proc.returncode} before listening\n"
                + self.tail()
            )

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        marker = f"node {self.node_id} listening on"
        while True:
            try:
                raw = await proc.stdout.readline()
            except (ValueError, OSError):  # an overlong line
                continue
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log(line)
            if marker in line:
                self._listening.set()

    def _log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {line}")
        if len(self.lines) > 20000:
            del self.lines[:5000]
        with self.log_path.open("a") as f:
            f.write(f"{stamp} {line}\n")

    async def signal(self, sig: int, timeout: float = 10.0) -> int | None:
        """Send ``sig``; wait (bounded) for the exit; SIGKILL if it does not come.
        Returns the exit status (None if it was not running)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        self._log(f"---- harness: signal {signal.Signals(sig).name}")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            self._log(f"---- harness: no exit within {timeout}s of the signal: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            async with asyncio.timeout(5.0):
                await proc.wait()
        _LIVE_PIDS.discard(proc.pid)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)
        self._log(f"---- harness: exited with {proc.returncode}")
        return proc.returncode

    async def kill(self) -> None:
        await self.signal(signal.SIGKILL)

    async def terminate(self, timeout: float = 10.0) -> int | None:
        return await self.signal(signal.SIGTERM, timeout)

    def tail(self, n: int = 40) -> str:
        return "\n".join(f"  [node {self.node_id}] {line}" for line in self.lines[-n:])


# --------------------------------------------------------------------------- cluster


class Cluster:
    """N node processes (ids 1..N) with per-pair proxies between them."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        proxies: bool = True,
        node_args: dict[int, Sequence[str]] | None = None,
        common_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.n = nodes
        self.use_proxies = proxies
        self.ports = {i: free_port() for i in range(1, nodes + 1)}
        self.proxies: dict[tuple[int, int], Proxy] = {}
        self.nodes: dict[int, NodeProcess] = {}
        self.node_args = node_args or {}
        self.common_args = list(common_args)
        self.clients: list[BrokerClient] = []
        self._probe: BrokerClient | None = None
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        if self.use_proxies:
            for a in range(1, self.n + 1):
                for b in range(1, self.n + 1):
                    if a != b:
                        proxy = Proxy(f"{a}->{b}", (HOST, self.ports[b]))
                        await proxy.start()
                        self.proxies[(a, b)] = proxy
        for i in range(1, self.n + 1):
            peers = {
                j: self.proxies[(i, j)].address
                if self.use_proxies
                else format_address(HOST, self.ports[j])
                for j in range(1, self.n + 1)
                if j != i
            }
            args = self.common_args + list(self.node_args.get(i, ()))
            self.nodes[i] = NodeProcess(
                i,
                self.ports[i],
                peers,
                root / "data" / f"node-{i}",
                root / f"node-{i}.log",
                args,
            )
        await asyncio.gather(*(node.start(timeout) for node in self.nodes.values()))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3.0)
        await asyncio.gather(*(node.kill() for node in self.nodes.values()), return_exceptions=True)
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.close()

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- addresses, clients

    def address(self, node_id: int) -> str:
        return format_address(HOST, self.ports[node_id])

    @property
    def addresses(self) -> list[str]:
        return [self.address(i) for i in sorted(self.nodes)]

    def live(self) -> list[int]:
        return [i for i, node in sorted(self.nodes.items()) if node.alive]

    def live_addresses(self) -> list[str]:
        return [self.address(i) for i in self.live()]

    def address_map(self) -> dict[str, str]:
        """Proxy address -> the node behind it (nodes advertise each other by those)."""
        return {proxy.address: self.address(b) for (_, b), proxy in self.proxies.items()}

    def node_of(self, address: str) -> int:
        address = self.address_map().get(address, address)
        for i in self.nodes:
            if self.address(i) == address:
                return i
        raise KeyError(address)

    def client(self, bootstrap: Iterable[str] | None = None, **kwargs: Any) -> BrokerClient:
        """A client of this cluster (closed with it)."""
        client = BrokerClient(
            list(bootstrap) if bootstrap is not None else self.addresses,
            address_map=self.address_map(),
            **kwargs,
        )
        self.clients.append(client)
        return client

    # ---------------------------------------------------------------- faults

    async def kill(self, node_id: int) -> None:
        await self.nodes[node_id].kill()

    async def terminate(self, node_id: int) -> int | None:
        return await self.nodes[node_id].terminate()

    async def restart(self, node_id: int, timeout: float = START_TIMEOUT) -> None:
        node = self.nodes[node_id]
        if node.alive:
            await node.terminate()
        await node.start(timeout)

    def cut(self, a: int, b: int, mode: str = "blackhole") -> None:
        """Sever a <-> b both ways (existing connections dropped, new ones blackholed or
        refused)."""
        self.proxies[(a, b)].cut(mode)
        self.proxies[(b, a)].cut(mode)

    def heal(self, a: int, b: int) -> None:
        self.proxies[(a, b)].heal()
        self.proxies[(b, a)].heal()

    def isolate(self, node_id: int, mode: str = "blackhole") -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other, mode)

    def heal_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    # ---------------------------------------------------------------- views

    async def describe(self, node_id: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """``node_id``'s view of the cluster (None when it does not answer)."""
        client = self._probe_client()
        try:
            async with asyncio.timeout(timeout):
                return await client.describe(self.address(node_id))
        except (BrokerError, TimeoutError):
            return None

    def _probe_client(self) -> BrokerClient:
        if self._probe is None:
            self._probe = self.client(timeout=2.0, max_attempts=1)
        return self._probe

    async def leader_of(
        self, topic: str, partition: int, *, exclude: Iterable[int] = ()
    ) -> tuple[int, int] | None:
        """(leader, term) of a partition, as claimed by a live node that says it is the
        leader itself (the highest term wins), or None."""
        excluded = set(exclude)
        best: tuple[int, int] | None = None
        for i in self.live():
            if i in excluded:
                continue
            d = await self.describe(i)
            if d is None:
                continue
            p = _partition(d, topic, partition)
            if p is not None and p["leader"] == i and (best is None or p["term"] > best[1]):
                best = (i, p["term"])
        return best

    async def wait_leader(
        self,
        topic: str,
        partition: int,
        *,
        exclude: Iterable[int] = (),
        timeout: float = 15.0,
    ) -> int:
        excluded = set(exclude)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self.leader_of(topic, partition, exclude=excluded)
            if found is not None:
                return found[0]
            if loop.time() >= deadline:
                raise AssertionError(
                    f"no leader of {topic}/{partition} (excluding {sorted(excluded)}) within "
                    f"{timeout}s\n{self.report()}"
                )
            await asyncio.sleep(0.1)

    async def wait_controller(self, timeout: float = 15.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i in self.live():
                d = await self.describe(i)
                if d is not None and d["controller_leader"] == i:
                    return i
            if loop.time() >= deadline:
                raise AssertionError(f"no controller leader within {timeout}s\n{self.report()}")
            await asyncio.sleep(0.1)

    async def wait_topic(self, topic: str, partitions: int, timeout: float = 20.0) -> None:
        """Every live node knows ``topic`` and every partition has a leader."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            views = [await self.describe(i) for i in self.live()]
            known = all(
                v is not None and any(t["name"] == topic for t in v["topics"]) for v in views
            )
            if known:
                leaders = [await self.leader_of(topic, p) for p in range(partitions)]
                if all(leaders):
                    return
            if loop.time() >= deadline:
                raise AssertionError(f"topic {topic} not ready within {timeout}s\n{self.report()}")
            await asyncio.sleep(0.1)

    async def create_topic(self, topic: str, partitions: int, replicas: int | None = None) -> None:
        client = self.client(timeout=15.0)
        await client.create_topic(topic, partitions, replicas)
        await self.wait_topic(topic, partitions)

    def group_of(self, description: dict[str, Any], topic: str, partition: int) -> int:
        p = _partition(description, topic, partition)
        if p is None:
            raise KeyError(f"{topic}/{partition}")
        return int(p["group"])

    def segments(self, node_id: int, group: int) -> list[Path]:
        """The log segments of one group's replica on ``node_id``, oldest first."""
        directory = self.nodes[node_id].data_dir / f"group-{group}"
        return sorted(directory.glob("*.log"))

    def report(self, lines: int = 30) -> str:
        """Every node's last output lines (for failure messages)."""
        parts = []
        for node in self.nodes.values():
            state = "alive" if node.alive else "down"
            parts.append(f"node {node.node_id} ({state}, log {node.log_path}):\n{node.tail(lines)}")
        return "\n".join(parts)

    async def check(
        self,
        topic: str,
        partitions: Sequence[int],
        history: Sequence[Attempt],
        *,
        timeout: float = 30.0,
    ) -> Report:
        """Checker over every live replica (read with fetch local=True)."""
        client = self.client(timeout=5.0)
        return await check_cluster(
            client, self.live_addresses(), topic, partitions, history, timeout=timeout
        )


def _partition(d: dict[str, Any], topic: str, partition: int) -> dict[str, Any] | None:
    for t in d["topics"]:
        if t["name"] == topic:
            for p in t["partitions"]:
                if p["partition"] == partition:
                    return dict(p)
    return None


# --------------------------------------------------------------------------- workload


@dataclass
class ProbeResult:
    elapsed: float
    offset: int
    tries: int


class Workload:
    """``producers`` tasks, each producing unique single values round-robin over
    ``partitions`` back to back (waiting for each answer), recording every attempt."""

    def __init__(
        self,
        client: BrokerClient,
        topic: str,
        partitions: Sequence[int],
        *,
        producers: int = 2,
        name: str = "w",
        pause: float = 0.0,
        error_pause: float = 0.05,
    ) -> None:
        self.client = client
        self.topic = topic
        self.partitions = list(partitions)
        self.producers = producers
        self.name = name
        self.pause = pause
        self.error_pause = error_pause
        self.history: list[Attempt] = []
        self.errors: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seq: dict[str, int] = {}
        self._batch = 0

    @property
    def acked(self) -> list[Attempt]:
        return [a for a in self.history if a.acked]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for p in range(self.producers):
            self._tasks.append(loop.create_task(self._run(f"{self.name}{p}", p)))

    async def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _run(self, producer: str, index: int) -> None:
        i = index
        while not self._stop.is_set():
            partition = self.partitions[i % len(self.partitions)]
            i += 1
            attempt = await self.produce_one(producer, partition)
            if not attempt.acked:
                await asyncio.sleep(self.error_pause)
            elif self.pause:
                await asyncio.sleep(self.pause)

    async def produce_one(self, producer: str, partition: int) -> Attempt:
        """Produce one unique value; record and return the attempt."""
        seq = self._seq.get(producer, 0)
        self._seq[producer] = seq + 1
        self._batch += 1
        value = f"{producer}-{seq:06d}".encode()
        sent = time.monotonic()
        offset: int | None = None
        error = ""
        try:
            offset = (await self.client.produce(self.topic, partition, [value]))[0]
        except ProduceError as exc:
            error = exc.cause + (" (ambiguous)" if exc.ambiguous else "")
            self.errors[exc.cause] = self.errors.get(exc.cause, 0) + 1
        except asyncio.CancelledError:
            error = "cancelled"
            self._record(producer, seq, partition, value, sent, offset, error)
            raise
        attempt = self._record(producer, seq, partition, value, sent, offset, error)
        return attempt

    def _record(
        self,
        producer: str,
        seq: int,
        partition: int,
        value: bytes,
        sent: float,
        offset: int | None,
        error: str,
    ) -> Attempt:
        attempt = Attempt(
            producer=producer,
            seq=seq,
            partition=partition,
            value=value,
            sent=sent,
            done=time.monotonic(),
            offset=offset,
            error=error,
            batch=self._batch,
        )
        self.history.append(attempt)
        return attempt

    def acks_after(self, t: float, partition: int | None = None) -> list[Attempt]:
        """Acks whose request was sent after ``t`` (time.monotonic())."""
        return [
            a
            for a in self.history
            if a.acked and a.sent >= t and (partition is None or a.partition == partition)
        ]

    async def wait_acks(
        self, n: int, *, after: float | None = None, partition: int | None = None, timeout: float
    ) -> float:
        """Wait until ``n`` acks were received for requests sent after ``after`` (default:
        now); returns the time of the first one, measured from ``after``."""
        start = time.monotonic() if after is None else after
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            acks = self.acks_after(start, partition)
            if len(acks) >= n:
                return min(a.done for a in acks) - start
            if loop.time() >= deadline:
                raise AssertionError(
                    f"only {len(acks)} of {n} acks within {timeout}s (errors so far: {self.errors})"
                )
            await asyncio.sleep(0.02)

    async def probe(self, partition: int, timeout: float, name: str = "probe") -> ProbeResult:
        """Produce unique values to ``partition`` until one is acknowledged (recorded in
        the history too); the time that took."""
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tries = 0
        while True:
            tries += 1
            attempt = await self.produce_one(name, partition)
            if attempt.acked:
                assert attempt.offset is not None
                return ProbeResult(time.monotonic() - start, attempt.offset, tries)
            if loop.time() >= deadline:
                raise AssertionError(
                    f"no produce to {self.topic}/{partition} acknowledged within {timeout}s "
                    f"({tries} tries, last error {attempt.error})"
                )
            await asyncio.sleep(0.01)


async def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 30.0) -> CliResult:
    """``python -m examples.broker ARGS`` without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.broker",
        *args,
        cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    _LIVE_PIDS.add(proc.pid)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"CLI {' '.join(args)} did not finish within {timeout}s") from None
    finally:
        _LIVE_PIDS.discard(proc.pid)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


@dataclass
class CliResult:
    code: int
    out: str
    err: str


__all__ = [
    "HOST",
    "ROOT",
    "Attempt",
    "BrokerClient",
    "BrokerError",
    "CliResult",
    "Cluster",
    "NodeProcess",
    "ProbeResult",
    "ProduceError",
    "Proxy",
    "Report",
    "Workload",
    "free_port",
    "run_cli",
]
