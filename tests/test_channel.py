"""smf.Channel over real server processes: balancing, a killed server, a paused one
(keepalive), a draining one (health NOT_SERVING), retries within the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import smf
from smf.channel import BackendState, Channel, RetryPolicy
from smf.health import ServingStatus
from smf_rpc.health.Health_smf import HealthClient
from smf_rpc.health.HealthCheckRequest import HealthCheckRequestT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "demo" / "generated"))

from smf_gen.demo.Request import RequestT
from smf_gen.demo.SmfStorage_smf import Get_WIRE_ID, Put_WIRE_ID, SmfStorageClient

SERVER = Path(__file__).resolve().parent / "_channel_server.py"


class Proc:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.port = int(line.split()[-1])
        self.address = f"127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def servers() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(3):
            procs.append(Proc())
        yield procs
    finally:
        for p in procs:
            p.stop()


async def _get(channel: Channel, timeout: float = 10.0) -> int:
    reply = await SmfStorageClient(channel).Get(RequestT(name="x"), timeout=timeout)  # type: ignore[arg-type]
    return int(reply.Name() or b"0")


async def _put(channel: Channel, seconds: float, timeout: float = 30.0) -> int:
    stub = SmfStorageClient(channel)  # type: ignore[arg-type]
    reply = await stub.Put(RequestT(name=str(seconds)), timeout=timeout)
    return int(reply.Name() or b"0")


def _backend(channel: Channel, proc: Proc) -> smf.channel.Backend:
    return next(b for b in channel.backends if b.address == proc.address)


async def _until(channel: Channel, proc: Proc, *states: BackendState) -> None:
    """Wait (bounded by the caller's timeout) until ``proc``'s backend is in ``states``."""
    backend = _backend(channel, proc)
    while backend.state not in states:
        await asyncio.sleep(0.02)


async def test_round_robin_spreads_calls_evenly_over_ready_backends(servers: list[Proc]) -> None:
    async with Channel([p.address for p in servers], keepalive=None) as channel:
        await channel.wait_ready(timeout=30, count=3)
        served = Counter([await _get(channel) for _ in range(30)])
        assert served == {p.port: 10 for p in servers}


async def test_pick_first_sends_everything_to_the_first_ready_backend(
    servers: list[Proc],
) -> None:
    addresses = [p.address for p in servers]
    async with Channel(addresses, policy="pick_first", keepalive=None) as channel:
        await channel.wait_ready(timeout=30, count=3)
        assert {await _get(channel) for _ in range(10)} == {servers[0].port}


async def test_a_killed_server_loses_no_idempotent_call(servers: list[Proc]) -> None:
    victim = servers[0]
    retry = RetryPolicy(max_attempts=5, idempotent={Get_WIRE_ID, Put_WIRE_ID})
    async with Channel([p.address for p in servers], retry=retry, keepalive=None) as channel:
        await channel.wait_ready(timeout=30, count=3)
        # Calls in flight everywhere (each Put sleeps 0.2 s), then the victim dies.
        in_flight = [asyncio.ensure_future(_put(channel, 0.2)) for _ in range(30)]
        await asyncio.sleep(0.05)
        victim.proc.kill()
        after = [await _get(channel) for _ in range(20)]
        results = await asyncio.gather(*in_flight)  # none raised: retried elsewhere
        assert len(results) == 30
        assert victim.port not in after
        assert set(after) == {servers[1].port, servers[2].port}
        assert _backend(channel, victim).state is BackendState.TRANSIENT_FAILURE


async def test_a_non_idempotent_call_on_a_killed_server_fails_with_connection_lost(
    servers: list[Proc],
) -> None:
    victim = servers[0]
    async with Channel([p.address for p in servers], keepalive=None) as channel:
        await channel.wait_ready(timeout=30, count=3)
        pending = asyncio.ensure_future(
            _backend(channel, victim).client.call(
                Put_WIRE_ID, bytes(RequestT(name="5").Encode()), timeout=60
            )
        )
        await asyncio.sleep(0.1)
        victim.proc.kill()
        with pytest.raises(smf.ConnectionLost):
            await pending
        # New calls, not idempotent either, are not sent to it.
        assert victim.port not in {await _get(channel) for _ in range(10)}


async def test_keepalive_marks_a_paused_server_dead_and_fails_its_calls(
    servers: list[Proc],
) -> None:
    paused = servers[1]
    async with Channel(
        [p.address for p in servers], keepalive=0.2, keepalive_timeout=0.5
    ) as channel:
        await channel.wait_ready(timeout=30, count=3)
        backend = _backend(channel, paused)
        pending = asyncio.ensure_future(
            backend.client.call(Put_WIRE_ID, bytes(RequestT(name="0").Encode()), timeout=120)
        )
        paused.signal(signal.SIGSTOP)
        try:
            # No reply can come; only keepalive (0.2 s + 0.5 s) can end the call before
            # its 120 s timeout, and it must end with ConnectionLost.
            await asyncio.sleep(0)
            with pytest.raises(smf.ConnectionLost, match="keepalive"):
                await asyncio.wait_for(pending, 60)
            assert backend.state is not BackendState.READY
            served = {await _get(channel) for _ in range(20)}
            assert paused.port not in served
        finally:
            paused.signal(signal.SIGCONT)


async def test_a_draining_server_says_not_serving_and_new_calls_go_elsewhere(
    servers: list[Proc],
) -> None:
    draining = servers[2]
    async with Channel([p.address for p in servers], keepalive=0.1) as channel:
        await channel.wait_ready(timeout=30, count=3)
        backend = _backend(channel, draining)
        # A long call keeps the server draining once told to stop.
        long_call = asyncio.ensure_future(
            backend.client.call(Put_WIRE_ID, bytes(RequestT(name="3").Encode()), timeout=60)
        )
        await asyncio.sleep(0.2)
        draining.signal(signal.SIGTERM)
        await asyncio.wait_for(_until(channel, draining, BackendState.NOT_SERVING), 30)
        assert "NOT_SERVING" in backend.last_error
        # Asked directly, it says so too (Check is answered while the server drains).
        check = await HealthClient(backend.client).Check(HealthCheckRequestT(), timeout=5)
        assert check.Status() == ServingStatus.NOT_SERVING
        served = Counter([await _get(channel) for _ in range(20)])
        assert draining.port not in served
        assert sum(served.values()) == 20
        await long_call  # the call in flight finishes: the server drains, not drops


async def test_no_backend_ready_fails_at_once_unless_wait_for_ready() -> None:
    # Nothing listens on these ports (bound, never listened: refused at once).
    with contextlib.ExitStack() as stack:
        import socket

        ports = []
        for _ in range(2):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        addresses = [f"127.0.0.1:{p}" for p in ports]
        async with Channel(addresses) as channel:
            await asyncio.wait_for(_until_all(channel, BackendState.TRANSIENT_FAILURE), 30)
            with pytest.raises(smf.ConnectionLost, match="no backend ready"):
                await _get(channel)
        async with Channel(addresses, wait_for_ready=True) as channel:
            with pytest.raises(smf.DeadlineExceeded, match="no backend ready"):
                await _get(channel, timeout=0.3)


async def _until_all(channel: Channel, state: BackendState) -> None:
    while not channel.backends or any(b.state is not state for b in channel.backends):
        await asyncio.sleep(0.02)


async def test_retries_stop_at_the_calls_deadline(servers: list[Proc]) -> None:
    # Every backend is NOT_SERVING: calls wait (wait_for_ready) and end at their deadline.
    retry = RetryPolicy(max_attempts=100, idempotent=True)
    async with Channel(
        [p.address for p in servers], wait_for_ready=True, retry=retry, keepalive=0.1
    ) as channel:
        await channel.wait_ready(timeout=30, count=3)
        for p in servers:
            p.signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(smf.DeadlineExceeded):
                await _get(channel, timeout=1.0)
            # Generous: the deadline (1 s) and one keepalive timeout, never 100 attempts' worth.
            assert loop.time() - started < 30
        finally:
            for p in servers:
                p.signal(signal.SIGCONT)


async def test_a_dns_name_resolves_to_its_addresses(servers: list[Proc]) -> None:
    async with Channel(f"localhost:{servers[0].port}", keepalive=None) as channel:
        assert any(b.address == servers[0].address for b in channel.backends)
        assert await _get(channel) == servers[0].port


async def test_generated_stubs_take_a_channel_and_a_client_alike(servers: list[Proc]) -> None:
    async with Channel([servers[0].address], keepalive=None) as channel:
        caller: smf.Caller = channel  # the stubs take either
        assert isinstance(channel.methods, smf.metrics.MethodTable)
        assert await _get(channel) == servers[0].port
        del caller


# ------------------------------------------------------------------ retry policy, in-process

FLAKY = 0x5EED0001


async def _unavailable_server() -> tuple[smf.Server, list[int]]:
    calls: list[int] = []

    async def flaky(ctx: smf.CallContext, body: memoryview) -> bytes:
        calls.append(1)
        raise smf.Unavailable("busy")

    server = smf.Server()
    server.add_handler(FLAKY, flaky, "test.flaky")
    await server.start("127.0.0.1", 0)
    return server, calls


def test_retry_policy_knows_its_idempotent_methods() -> None:
    assert not RetryPolicy().is_idempotent(FLAKY)
    assert RetryPolicy(idempotent=True).is_idempotent(FLAKY)
    assert RetryPolicy(idempotent={FLAKY}).is_idempotent(FLAKY)
    assert not RetryPolicy(idempotent={FLAKY}).is_idempotent(FLAKY + 1)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


async def test_a_503_is_retried_only_for_idempotent_methods() -> None:
    server, calls = await _unavailable_server()
    try:
        address = f"127.0.0.1:{server.port}"
        async with Channel([address], keepalive=None) as channel:
            with pytest.raises(smf.Unavailable):
                await channel.call(FLAKY, b"x", timeout=10)
            assert len(calls) == 1
        calls.clear()
        retry = RetryPolicy(max_attempts=3, idempotent={FLAKY})
        async with Channel([address], keepalive=None, retry=retry, wait_for_ready=True) as channel:
            with pytest.raises(smf.Unavailable):
                await channel.call(FLAKY, b"x", timeout=10)
            assert len(calls) == 3
    finally:
        await server.stop(grace=0.1)


async def test_retries_end_at_the_deadline_not_at_max_attempts() -> None:
    server, calls = await _unavailable_server()
    try:
        retry = RetryPolicy(
            max_attempts=1_000_000,
            idempotent=True,
            backoff=smf.Backoff(initial=0.05, maximum=0.05, jitter=0.0),
        )
        async with Channel(
            [f"127.0.0.1:{server.port}"], keepalive=None, retry=retry, wait_for_ready=True
        ) as channel:
            with pytest.raises((smf.Unavailable, smf.DeadlineExceeded)):
                await channel.call(FLAKY, b"x", timeout=0.5)
            # 0.5 s of 0.05 s pauses: about ten attempts, far from a million.
            assert 1 <= len(calls) <= 100
    finally:
        await server.stop(grace=0.1)
