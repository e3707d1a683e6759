"""Maps wire ids to handlers. Generated service classes plug in here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from .context import CallContext
from .wire import Payload, payload_size

__all__ = ["Handler", "Payload", "Service", "ServiceRouter", "payload_size"]

Handler = Callable[[CallContext, memoryview], Awaitable[Payload]]
"""``await handler(ctx, request_body) -> response_body``. Raise ``smf.RpcError`` (or a
subclass) to answer with its status; ``NotImplementedError`` answers 501; any other
exception answers 500 with the error text."""


class Service(Protocol):
    """Anything that names itself and maps wire ids to handlers (generated code does).
    It may also carry ``method_names: Mapping[int, str]`` (wire id → "Service.Method")
    for metrics and logs."""

    service_name: str

    def method_handlers(self) -> Mapping[int, Handler]: ...


class ServiceRouter:
    """The server's wire id → (handler, "Service.Method") table."""

    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}  # read directly on the request path
        self._owners: dict[int, str] = {}

    def add_service(self, service: Service) -> None:
        handlers = service.method_handlers()
        for wire_id in handlers:
            if wire_id in self.handlers:
                raise ValueError(
                    f"wire id {wire_id} of service {service.service_name!r} is already "
                    f"served by {self._owners[wire_id]!r}"
                )
        # Generated services name their methods; otherwise the handler's name is used.
        names: Mapping[int, str] = getattr(service, "method_names", {})
        for wire_id, handler in handlers.items():
            self.handlers[wire_id] = handler
            method = getattr(handler, "__name__", str(wire_id))
            self._owners[wire_id] = names.get(wire_id, f"{service.service_name}.{method}")

    def add_handler(self, wire_id: int, handler: Handler, owner: str = "?") -> None:
        if wire_id in self.handlers:
            raise ValueError(f"wire id {wire_id} is already served by {self._owners[wire_id]!r}")
        self.handlers[wire_id] = handler
        self._owners[wire_id] = owner

    def names(self) -> dict[int, str]:
        """wire id → "Service.Method" (the handler's ``__name__`` names the method)."""
        return dict(self._owners)

    def get(self, wire_id: int) -> Handler | None:
        return self.handlers.get(wire_id)

    def wire_ids(self) -> Iterable[int]:
        return self.handlers.keys()
