"""``smf.Channel``: one client over several servers, with load balancing, health checks,
keepalive and retries.

A channel holds one ``smf.Client`` connection per backend (each address, or each address a
DNS name resolves to) and a task per backend that keeps it usable:

- it connects, with exponential backoff while the backend refuses or resets;
- it asks the backend's health service (``smf.health``) whether it is SERVING; a backend
  answering NOT_SERVING (a draining server) or 503 takes no new calls until a later check
  says SERVING (a peer without a health service counts as serving);
- keepalive: every ``keepalive`` seconds, a connection on which nothing arrived since the
  last tick gets a health check; no answer within ``keepalive_timeout`` marks the peer dead:
  the connection is closed and its pending calls fail with ``ConnectionLost``, so a silent
  peer (paused, partitioned) is noticed within ``2 * keepalive + keepalive_timeout``
  seconds at worst.

Calls go to a READY backend: the first in address order (``policy="pick_first"``) or each
in turn (``"round_robin"``). With none ready, a call waits (within its deadline) while some
backend is still connecting or ``wait_for_ready`` is set, and otherwise fails at once with
``ConnectionLost`` naming each backend's trouble.

Retries (``RetryPolicy``): a call that never reached a server (its backend had no
connection) is always retried on another; a call that may have reached one is retried only
for idempotent methods (``RetryPolicy(idempotent=...)``), on ``ConnectionLost`` or a
retryable status (503 by default), up to ``max_attempts`` in all, with backoff, and never
past the call's deadline.

``Channel.call`` and ``Channel.methods`` are those of ``smf.Client``, so generated client
stubs take a channel wherever they take a client (``Caller`` is the protocol both meet).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import socket
from collections.abc import Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from smf_rpc.health.HealthCheckRequest import HealthCheckRequestT
from smf_rpc.health.HealthCheckResponse import HealthCheckResponse

from .backoff import Backoff
from .client import DEFAULT, Client, Default
from .errors import ConnectionLost, DeadlineExceeded, NotFound, RpcError, Unimplemented
from .health import CHECK_WIRE_ID, ServingStatus
from .metrics import MethodTable
from .router import Payload
from .stubs import Caller

log = logging.getLogger("smf.channel")

__all__ = ["BackendState", "Caller", "Channel", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed call is tried again (on whichever backend is picked next).

    ``idempotent``: wire ids of the methods safe to run twice, or ``True`` for all. Only
    those are retried after the request may have reached a server (``ConnectionLost``
    mid-call, or a status in ``retryable_statuses``). A call that reached no server is
    retried whatever the method. ``max_attempts`` counts the first one.
    """

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.01, maximum=0.5))
    retryable_statuses: frozenset[int] = frozenset({503})
    idempotent: bool | Collection[int] = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def is_idempotent(self, wire_id: int) -> bool:
        if isinstance(self.idempotent, bool):
            return self.idempotent
        return wire_id in self.idempotent


NO_RETRY = RetryPolicy(max_attempts=1)


class BackendState(enum.Enum):
    CONNECTING = "connecting"  # no answer yet (first connection, or after a loss)
    READY = "ready"  # connected and serving: takes calls
    NOT_SERVING = "not serving"  # connected, health says NOT_SERVING (or 503)
    TRANSIENT_FAILURE = "failing"  # refused, reset or silent: retried with backoff
    SHUTDOWN = "shut down"


class Backend:
    """One server behind the channel: its client and what the channel knows of it."""

    def __init__(self, address: str, client: Client) -> None:
        self.address = address
        self.client = client
        self.state = BackendState.CONNECTING
        self.last_error = ""
        self.calls = 0  # calls the channel sent here
        self.task: asyncio.Task[None] | None = None
        self.recheck = asyncio.Event()  # wakes the task for an early health check

    def __repr__(self) -> str:
        why = f" ({self.last_error})" if self.last_error else ""
        return f"<Backend {self.address} {self.state.value}{why}>"


def _split_address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


_CHECK_PAYLOADS: dict[str, bytes] = {}


def _check_payload(service: str) -> bytes:
    payload = _CHECK_PAYLOADS.get(service)
    if payload is None:
        payload = _CHECK_PAYLOADS[service] = bytes(HealthCheckRequestT(service=service).Encode())
    return payload


class Channel:
    """Calls spread over several smf servers (see the module's documentation).

    ``addresses``: ``"host:port"`` strings (or ``(host, port)`` tuples, or one string with
    commas); each host is resolved when the channel starts and every address it resolves
    to is a backend. ``client_options`` go to each backend's ``smf.Client`` (``ssl``,
    ``filters``, ``max_body_size``, ...).
    """

    def __init__(
        self,
        addresses: str | Iterable[str | tuple[str, int]],
        *,
        policy: Literal["round_robin", "pick_first"] = "round_robin",
        timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        health_check: bool = True,
        health_service: str = "",
        keepalive: float | None = 10.0,
        keepalive_timeout: float = 5.0,
        backoff: Backoff | None = None,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = False,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        self.targets = [_split_address(a) for a in addresses]
        if not self.targets:
            raise ValueError("a channel needs at least one address")
        if policy not in ("round_robin", "pick_first"):
            raise ValueError(f"unknown policy {policy!r}: round_robin or pick_first")
        self.policy = policy
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.health_check = health_check
        self.health_service = health_service
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.backoff = backoff or Backoff(initial=0.05, maximum=2.0)
        self.retry = retry or RetryPolicy()
        self.wait_for_ready = wait_for_ready
        self.client_options = dict(client_options or {})
        self.methods = MethodTable()
        self.backends: list[Backend] = []
        self._ready: list[Backend] = []
        self._turn = itertools.count()
        self._changed: asyncio.Event | None = None
        self._started: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ backends

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        seen: set[tuple[str, int]] = set()
        for host, port in self.targets:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ConnectionLost(f"cannot resolve {host}:{port}: {exc}") from exc
            for _family, _type, _proto, _name, sockaddr in infos:
                ip, resolved_port = str(sockaddr[0]), int(sockaddr[1])
                if (ip, resolved_port) in seen:
                    continue
                seen.add((ip, resolved_port))
                self._add_backend(ip, resolved_port, host)

    def _add_backend(self, host: str, port: int, name: str) -> None:
        options = dict(self.client_options)
        if options.get("ssl") is not None:
            options.setdefault("server_hostname", name)  # the name, not the resolved IP
        # The channel reconnects its backends itself (with health checks and backoff):
        # a backend's own client must fail fast so the pick moves on.
        options.setdefault("reconnect", False)
        client = Client(
            host,
            port,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            **options,
        )
        client.methods = self.methods  # one table for the whole channel
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        backend = Backend(shown, client)
        self.backends.append(backend)
        backend.task = asyncio.get_running_loop().create_task(self._maintain(backend))

    async def connect(self) -> None:
        """Resolve the addresses and start connecting (calls do this on first use)."""
        if self._closed:
            raise ConnectionLost("channel is closed")
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def wait_ready(self, timeout: float | None = None, count: int = 1) -> None:
        """Wait until ``count`` backends are READY (``DeadlineExceeded`` after ``timeout``)."""
        await self.connect()
        assert self._changed is not None
        try:
            async with asyncio.timeout(timeout):
                while len(self._ready) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise DeadlineExceeded(
                f"{len(self._ready)} of {count} backends ready within {timeout}s: {self.describe()}"
            ) from None

    def describe(self) -> str:
        return ", ".join(
            f"{b.address} {b.state.value}" + (f" ({b.last_error})" if b.last_error else "")
            for b in self.backends
        )

    def _set_state(self, backend: Backend, state: BackendState, error: str = "") -> None:
        if error:
            backend.last_error = error
        elif state is BackendState.READY:
            backend.last_error = ""
        if backend.state is state:
            return
        if state is not BackendState.CONNECTING:
            log.info(
                "backend %s: %s -> %s %s", backend.address, backend.state.value, state.value, error
            )
        backend.state = state
        self._ready = [b for b in self.backends if b.state is BackendState.READY]
        if self._changed is not None:
            self._changed.set()

    async def _maintain(self, backend: Backend) -> None:
        """Connect, check health, probe on the keepalive timer; reconnect with backoff."""
        client = backend.client
        delays = self.backoff.delays()
        try:
            while not self._closed:
                try:
                    await client.connect()
                except ConnectionLost as exc:
                    self._set_state(backend, BackendState.TRANSIENT_FAILURE, str(exc))
                    await asyncio.sleep(next(delays))
                    continue
                conn = client.connection
                assert conn is not None
                if self.health_check:
                    await self._probe(backend)
                else:
                    self._set_state(backend, BackendState.READY)
                if backend.state is BackendState.READY:
                    delays = self.backoff.delays()
                await self._watch(backend, conn)
                if self._closed:
                    break
                if backend.state is not BackendState.TRANSIENT_FAILURE:
                    why = client.last_loss or "connection closed"
                    self._set_state(backend, BackendState.TRANSIENT_FAILURE, why)
                await asyncio.sleep(next(delays))
        finally:
            self._set_state(backend, BackendState.SHUTDOWN)

    async def _watch(self, backend: Backend, conn: Any) -> None:
        """Until ``conn`` is lost: keepalive probes, and health checks while not serving."""
        interval = self.keepalive
        not_serving_delays = self.backoff.delays()
        seen = conn.events_seen
        while not conn.closed:
            if backend.state is BackendState.READY:
                wait: float | None = interval
            else:
                wait = next(not_serving_delays)
                if interval is not None:
                    wait = min(wait, interval)
            backend.recheck.clear()
            waiters = [
                asyncio.ensure_future(conn.lost),
                asyncio.ensure_future(backend.recheck.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters[1:]:
                    w.cancel()
            if conn.closed or self._closed:
                return
            alive = conn.events_seen != seen  # something arrived since the last tick
            if alive and backend.state is BackendState.READY and not backend.recheck.is_set():
                seen = conn.events_seen
                continue
            await self._probe(backend)
            seen = conn.events_seen
            if backend.state is BackendState.READY:
                not_serving_delays = self.backoff.delays()

    async def _probe(self, backend: Backend) -> None:
        """One health check; a silent peer's connection is closed (its calls fail)."""
        client = backend.client
        try:
            body = await client.call(
                CHECK_WIRE_ID,
                _check_payload(self.health_service),
                timeout=self.keepalive_timeout,
            )
            status = ServingStatus(HealthCheckResponse.GetRootAs(body, 0).Status())
        except DeadlineExceeded:
            why = f"keepalive: no answer from {backend.address} within {self.keepalive_timeout}s"
            self._set_state(backend, BackendState.TRANSIENT_FAILURE, why)
            client.abort(why)
            return
        except ConnectionLost as exc:
            self._set_state(backend, BackendState.TRANSIENT_FAILURE, str(exc))
            return
        except (NotFound, Unimplemented):
            status = ServingStatus.SERVING  # no health service: connected is all we know
        except RpcError as exc:
            self._set_state(backend, BackendState.NOT_SERVING, f"health check: {exc}")
            return
        except ValueError:
            status = ServingStatus.UNKNOWN
        if status is ServingStatus.SERVING:
            self._set_state(backend, BackendState.READY)
        else:
            self._set_state(backend, BackendState.NOT_SERVING, f"health: {status.name}")

    # ------------------------------------------------------------------ calling

    async def _pick(self, deadline: float | None) -> Backend:
        if self._changed is None or self._started is None or not self._started.done():
            await self.connect()
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        while True:
            ready = self._ready
            if ready:
                if self.policy == "pick_first":
                    return ready[0]
                return ready[next(self._turn) % len(ready)]
            if self._closed:
                raise ConnectionLost("channel is closed")
            connecting = any(b.state is BackendState.CONNECTING for b in self.backends)
            if not (self.wait_for_ready or connecting):
                raise ConnectionLost(f"no backend ready: {self.describe()}")
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise DeadlineExceeded(f"no backend ready in time: {self.describe()}")
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                raise DeadlineExceeded(f"no backend ready in time: {self.describe()}") from None

    def call(
        self,
        wire_id: int,
        payload: Payload,
        *,
        timeout: float | Default | None = DEFAULT,
        metadata: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, memoryview]:
        """``smf.Client.call`` on a backend the policy picks, retried per ``retry``."""
        return self._call(wire_id, payload, timeout, metadata)

    async def _call(
        self,
        wire_id: int,
        payload: Payload,
        timeout: float | Default | None,
        metadata: Mapping[str, str] | None,
    ) -> memoryview:
        loop = asyncio.get_running_loop()
        total = self.timeout if isinstance(timeout, Default) else timeout
        deadline = None if total is None else loop.time() + total
        policy = self.retry
        delays = None  # made on the first retry: the common call never needs them
        attempt = 0
        unreached = 0  # attempts that failed before sending: they do not count
        while True:
            attempt += 1
            ready = self._ready
            if ready:  # _pick's first step, inline (the common case)
                if self.policy == "pick_first":
                    backend = ready[0]
                else:
                    backend = ready[next(self._turn) % len(ready)]
            else:
                backend = await self._pick(deadline)
            client = backend.client
            reached = client.connected  # else it fails before sending
            attempt_timeout: float | Default | None = timeout
            if attempt > 1 or not isinstance(timeout, Default):
                attempt_timeout = None if deadline is None else deadline - loop.time()
            backend.calls += 1
            try:
                return await client.call(
                    wire_id, payload, timeout=attempt_timeout, metadata=metadata
                )
            except ConnectionLost as exc:
                lost = not client.connected  # not a filter's drop
                if lost and backend.state is BackendState.READY:
                    self._set_state(backend, BackendState.TRANSIENT_FAILURE, str(exc))
                if not reached:
                    unreached += 1
                    attempt -= 1
                    if unreached > len(self.backends):
                        raise
                elif not policy.is_idempotent(wire_id) or attempt >= policy.max_attempts:
                    raise
                error: Exception = exc
            except RpcError as exc:
                if exc.status == 503 and backend.state is BackendState.READY:
                    # Draining or overloaded: no new calls until a health check says so.
                    self._set_state(backend, BackendState.NOT_SERVING, f"answered 503: {exc}")
                    backend.recheck.set()
                if exc.status not in policy.retryable_statuses:
                    raise
                if not policy.is_idempotent(wire_id) or attempt >= policy.max_attempts:
                    raise
                error = exc
            if delays is None:
                delays = policy.backoff.delays()
            delay = next(delays)
            if deadline is not None and loop.time() + delay >= deadline:
                raise error
            log.debug("retrying %d after %s (attempt %d)", wire_id, error, attempt)
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        self._closed = True
        if self._started is not None and not self._started.done():
            self._started.cancel()
        for backend in self.backends:
            if backend.task is not None:
                backend.task.cancel()
        for backend in self.backends:
            if backend.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await backend.task
            await backend.client.close()
        if self._changed is not None:
            self._changed.set()

    async def __aenter__(self) -> Channel:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
