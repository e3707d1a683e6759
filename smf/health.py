"""The health service every ``smf.Server`` serves (``idl/health.fbs``, after gRPC's
``grpc.health.v1``), and the hook that installs it and the reflection service.

``Check`` answers per service name: ``""`` is the server as a whole, a registered
service's bare (``SmfStorage``) or qualified (``smf_gen.demo.SmfStorage``) name is that
service (it follows the server's status unless set on its own), any other name set with
``set_status`` is answered as set, and the rest answer ``SERVICE_UNKNOWN``.

``Server.stop()`` calls ``shutdown()`` first: everything answers ``NOT_SERVING`` while
calls in flight drain (health checks are still answered then; other new calls get 503),
and later ``set_status`` calls are ignored until ``resume()``.

``Watch`` (a server stream) sends a service's status at once, then each change (a
watcher that reads slowly sees the latest status, not every intermediate one), until the
caller ends the stream or the server stops.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from .builtin import LazyService

if TYPE_CHECKING:
    from .context import CallContext
    from .server import Server

log = logging.getLogger("smf.health")

__all__ = ["CHECK_WIRE_ID", "WATCH_WIRE_ID", "HealthService", "ServingStatus", "install"]

CHECK_WIRE_ID: Final = 1323399238
"""``smf_rpc.health.Health_smf.Check_WIRE_ID`` (a test checks), answered even while the
server drains."""
WATCH_WIRE_ID: Final = 1502767353
"""``smf_rpc.health.Health_smf.Watch_WIRE_ID`` (a test checks)."""


class ServingStatus(enum.IntEnum):
    """``smf_rpc.health.ServingStatus`` as an enum (same values)."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


class HealthService(LazyService):
    """The server's health table. ``server.health.set_status("SmfStorage",
    ServingStatus.NOT_SERVING)`` takes one service out; ``set_status("", ...)`` the whole
    server (services with no status of their own follow it)."""

    service_name = "Health"
    service_fqn = "smf_rpc.health.Health"
    method_names: Mapping[int, str] = {
        CHECK_WIRE_ID: "Health.Check",
        WATCH_WIRE_ID: "Health.Watch",
    }
    stream_kinds: Mapping[int, str] = {WATCH_WIRE_ID: "server"}

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server
        self._overall = ServingStatus.SERVING
        self._statuses: dict[str, ServingStatus] = {}
        self.shut_down = False
        self._changed: asyncio.Event | None = None  # set (and replaced) on every change

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def watch(self, service: str = "") -> AsyncIterator[ServingStatus]:
        """``service``'s status now, then each time it changes."""
        last = None
        while True:
            status = self.status(service)
            if status != last:
                last = status
                yield status
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def set_status(self, service: str, status: ServingStatus | int) -> None:
        """Set ``service``'s status (``""``: the server's). Ignored after ``shutdown()``."""
        status = ServingStatus(status)
        if self.shut_down:
            log.info("health of %r stays NOT_SERVING: the server is shutting down", service)
            return
        if service:
            self._statuses[service] = status
        else:
            self._overall = status
        self._notify()

    def clear_status(self, service: str) -> None:
        """Let ``service`` follow the server's status again."""
        self._statuses.pop(service, None)
        self._notify()

    def status(self, service: str = "") -> ServingStatus:
        """What ``Check`` answers for ``service``."""
        if not service:
            return self._overall
        status = self._statuses.get(service)
        if status is not None:
            return status
        for registered in self._server.services:
            if service == registered.service_name or service == _fqn(registered):
                status = self._statuses.get(registered.service_name)
                return self._overall if status is None else status
        return ServingStatus.SERVICE_UNKNOWN

    def shutdown(self) -> None:
        """Everything answers NOT_SERVING from now on (until ``resume()``)."""
        self._overall = ServingStatus.NOT_SERVING
        for name in self._statuses:
            self._statuses[name] = ServingStatus.NOT_SERVING
        self.shut_down = True
        self._notify()

    def resume(self) -> None:
        """Undo ``shutdown()``: the server and its services answer SERVING."""
        self.shut_down = False
        self._overall = ServingStatus.SERVING
        self._statuses.clear()
        self._notify()

    def build(self) -> Any:
        from smf_rpc.health.Health_smf import Health
        from smf_rpc.health.HealthCheckRequest import HealthCheckRequest
        from smf_rpc.health.HealthCheckResponse import HealthCheckResponseT

        outer = self

        class Implementation(Health):
            async def Check(self, request: HealthCheckRequest, ctx: CallContext) -> Any:
                name = request.Service()
                service = name.decode("utf-8", "replace") if isinstance(name, bytes) else ""
                return HealthCheckResponseT(status=int(outer.status(service)))

            async def Watch(
                self, request: HealthCheckRequest, ctx: CallContext
            ) -> AsyncIterator[Any]:
                name = request.Service()
                service = name.decode("utf-8", "replace") if isinstance(name, bytes) else ""
                async for status in outer.watch(service):
                    yield HealthCheckResponseT(status=int(status))

        return Implementation()


def _fqn(service: object) -> str:
    from .reflection import schema_of

    return schema_of(service)[0]  # reads the .bfbs too, once per service (cached)


def install(
    server: Server, health: bool = True, reflection: bool = True
) -> tuple[HealthService | None, frozenset[int]]:
    """Add the built-in services to ``server``: (its health service, the wire ids
    answered while it drains)."""
    service = None
    if health:
        service = HealthService(server)
        server.add_service(service)
    if reflection:
        from .reflection import ReflectionService

        server.add_service(ReflectionService(server))
    return service, frozenset({CHECK_WIRE_ID} if health else ())
