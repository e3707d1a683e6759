"""A bounded soak: up to 1M calls across reconnects, timeouts and cancellations; then the
server's and the client's RSS and open file descriptors are back to their baseline and
no pending call, session, handler task or budget charge is left behind.

The server runs in its own process (tests/_soak_server.py); the client runs here, 64
calls in flight. The mix: echo calls of assorted sizes, calls whose tiny timeout
expires (the deadline travels, the server cancels the handler and answers 408 late),
calls cancelled by their caller, forced reconnects (a new client replaces the old one,
whose calls in flight fail) and server-side drops (the client reconnects on its own).

Slow pass only (``./dev slow``). ``SMF_SOAK_CALLS`` (default 1,000,000) and
``SMF_SOAK_SECONDS`` (default 150: no new calls after it) bound the run; the figures
are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import importlib.util
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import smf

MiB = 1024 * 1024
CALLS = int(os.environ.get("SMF_SOAK_CALLS", "1000000"))
SECONDS = float(os.environ.get("SMF_SOAK_SECONDS", "150"))
CONCURRENCY = 64
RECONNECT_EVERY = 50_003  # calls between forced client replacements
DROP_EVERY = 50_021  # calls between server-side connection drops


def _load_helper() -> ModuleType:
    path = Path(__file__).with_name("_soak_server.py")
    spec = importlib.util.spec_from_file_location("smf_tests_soak_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = _load_helper()


def _own_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def _own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Soak:
    def __init__(self, port: int) -> None:
        self.port = port
        self.client: smf.Client | None = None
        self.retired = 0
        self.retired_pending = 0  # calls or session waiters a closed client still held
        self.issued = 0
        self.limit = 0
        self.deadline = 0.0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.payloads = [os.urandom(n) for n in (1, 16, 100, 200, 700, 1500, 4096, 65536)]

    def new_client(self) -> smf.Client:
        return smf.Client(
            "127.0.0.1",
            self.port,
            timeout=10.0,
            reconnect=smf.Backoff(initial=0.005, maximum=0.1),
        )

    async def start(self) -> None:
        self.client = self.new_client()
        await self.client.connect()

    async def replace_client(self) -> None:
        """A forced reconnect: a new client takes over, the old one closes under load."""
        fresh = self.new_client()
        await fresh.connect()
        old, self.client = self.client, fresh
        assert old is not None
        await old.close()
        await asyncio.sleep(0)  # let the calls it failed see their errors
        self.retired += 1
        if old._conn is not None:
            self.retired_pending += len(old._conn.sessions) + len(old._conn.sessions._waiters)

    async def one_call(self, n: int) -> None:
        client = self.client
        assert client is not None
        kind = n % 100
        try:
            if n % RECONNECT_EVERY == RECONNECT_EVERY - 1:
                await self.replace_client()
                self.outcomes["forced reconnect"] += 1
            elif n % DROP_EVERY == DROP_EVERY - 1:
                await client.call(helper.DROP, b"drop me")
                self.outcomes["server drop"] += 1
            elif kind < 2:
                with contextlib.suppress(smf.DeadlineExceeded):
                    await client.call(helper.SLEEP, b"0.05", timeout=0.002)
                    raise AssertionError("a 2 ms call to a 50 ms handler succeeded")
                self.outcomes["timed out"] += 1
            elif kind < 4:
                call = asyncio.ensure_future(client.call(helper.SLEEP, b"0.01"))
                await asyncio.sleep(0.001)
                call.cancel()
                try:
                    await call
                    self.outcomes["finished before cancel"] += 1
                except asyncio.CancelledError:
                    self.outcomes["cancelled"] += 1
            else:
                payload = self.payloads[n % len(self.payloads)]
                result = await client.call(helper.ECHO, payload)
                assert result == payload
                self.outcomes["ok"] += 1
        except smf.ConnectionLost:
            self.outcomes["connection lost"] += 1  # a reconnect or drop caught it in flight

    async def worker(self) -> None:
        while self.issued < self.limit and time.monotonic() < self.deadline:
            n = self.issued
            self.issued += 1
            await self.one_call(n)

    async def run(self, calls: int, seconds: float) -> None:
        self.limit = self.issued + calls
        self.deadline = time.monotonic() + seconds
        await asyncio.gather(*(self.worker() for _ in range(CONCURRENCY)))

    async def quiesce(self, admin: smf.Client) -> dict[str, Any]:
        """The client connected and idle, the server holding only the soak and admin
        connections with nothing in flight; the server's stats (after gc)."""
        assert self.client is not None
        async with asyncio.timeout(30):
            while not self.client.connected:
                await asyncio.sleep(0.01)
        assert bytes(await self.client.call(helper.ECHO, b"ping")) == b"ping"
        async with asyncio.timeout(30):
            while True:
                report: dict[str, Any] = json.loads(bytes(await admin.call(helper.STATS, b"gc")))
                if report["connections"] == 2 and report["tasks"] == 0:
                    break
                await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0.5)
        gc.collect()
        report = json.loads(bytes(await admin.call(helper.STATS, b"gc")))
        return report


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_soak_resources_return_to_baseline() -> None:
    server = helper.ServerProcess({"idle_timeout": None})
    admin = smf.Client("127.0.0.1", server.port, timeout=30.0)
    soak = Soak(server.port)
    try:
        await admin.connect()
        await soak.start()
        # Warm-up: every kind of call, a drop and a reconnect; allocator pools filled.
        await soak.run(15_000, 60.0)
        with contextlib.suppress(smf.ConnectionLost):
            await soak.client.call(helper.DROP, b"warm-up drop")  # type: ignore[union-attr]
        await soak.run(15_000, 60.0)
        await soak.replace_client()
        base_server = await soak.quiesce(admin)
        base_rss, base_fds = _own_rss(), _own_fds()
        base_tasks = len(asyncio.all_tasks())
        warm_outcomes = dict(soak.outcomes)
        soak.outcomes.clear()

        t0 = time.monotonic()
        await soak.run(CALLS, SECONDS)
        elapsed = time.monotonic() - t0
        done = soak.issued - 30_000

        end_server = await soak.quiesce(admin)
        end_rss, end_fds = _own_rss(), _own_fds()
        end_tasks = len(asyncio.all_tasks())
        client = soak.client
        assert client is not None and client._conn is not None
        stats = client.stats

        print(
            f"\n[soak] {done} calls in {elapsed:.1f}s ({done / elapsed:,.0f} calls/s, "
            f"{CONCURRENCY} in flight); warm-up outcomes {warm_outcomes}\n"
            f"[soak] outcomes {dict(soak.outcomes)}\n"
            f"[soak] current client: {stats}; {soak.retired} clients retired\n"
            f"[soak] client RSS {base_rss / MiB:.1f} -> {end_rss / MiB:.1f} MiB "
            f"({(end_rss - base_rss) / MiB:+.1f}), fds {base_fds} -> {end_fds}, asyncio "
            f"tasks {base_tasks} -> {end_tasks}\n"
            f"[soak] server RSS {base_server['rss'] / MiB:.1f} -> {end_server['rss'] / MiB:.1f} "
            f"MiB ({(end_server['rss'] - base_server['rss']) / MiB:+.1f}), fds "
            f"{base_server['fds']} -> {end_server['fds']}, asyncio tasks "
            f"{base_server['asyncio_tasks']} -> {end_server['asyncio_tasks']}, budget peak "
            f"{end_server['budget_peak']} B\n"
            f"[soak] server stats {end_server['stats']}"
        )

        assert done >= min(CALLS, 100_000), f"only {done} calls in {elapsed:.0f}s"
        assert soak.outcomes["ok"] > 0.9 * done
        assert soak.outcomes["timed out"] > 0 and soak.outcomes["cancelled"] > 0
        # Nothing pending on the client.
        assert client.in_flight == 0
        assert len(client._conn.sessions) == 0
        assert not client._conn.sessions._waiters
        assert soak.retired_pending == 0
        assert end_tasks <= base_tasks
        # Nothing pending on the server.
        assert end_server["tasks"] == 0
        assert end_server["in_flight"] == 0
        assert end_server["budget_used"] == 0
        assert end_server["connections"] == 2
        assert end_server["buffered"] == 0
        assert end_server["loop_errors"] == 0 and end_server["log_errors"] == 0
        assert end_server["asyncio_tasks"] <= base_server["asyncio_tasks"]
        # Memory and descriptors back to their baseline (generous bounds).
        assert end_rss - base_rss < 50 * MiB
        assert end_server["rss"] - base_server["rss"] < 50 * MiB
        assert abs(end_fds - base_fds) <= 2
        assert abs(end_server["fds"] - base_server["fds"]) <= 2
    finally:
        if soak.client is not None:
            await soak.client.close()
        await admin.close()
        code = server.stop()
    assert code == 0, f"server exited with {code}"
