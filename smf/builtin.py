"""The base of the services every server has built in (health, reflection): their
generated stubs, and with them ``flatbuffers`` (which imports numpy, ~15 MiB), load on
their first call, so a server that is never asked pays nothing for them."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .context import CallContext
from .router import Handler, Payload


class LazyService:
    """An ``smf.Service`` whose handlers come from ``build()`` (the generated service,
    implemented), called on the first call of any of its methods."""

    service_name: str
    service_fqn: str
    method_names: Mapping[int, str]  # wire id -> "Service.Method", every method
    stream_kinds: Mapping[int, str] = {}  # wire id -> "server"/"client"/"bidi"

    def __init__(self) -> None:
        self._built: tuple[Mapping[int, Handler], Mapping[int, tuple[str, Any]]] | None = None

    def build(self) -> Any:
        """The generated service class, implemented and instantiated."""
        raise NotImplementedError

    def _handlers(self) -> tuple[Mapping[int, Handler], Mapping[int, tuple[str, Any]]]:
        if self._built is None:
            service = self.build()
            streams = service.stream_handlers() if self.stream_kinds else {}
            self._built = (service.method_handlers(), streams)
        return self._built

    @property
    def schema_bfbs(self) -> Path | None:
        """The ``.bfbs`` smfc wrote next to the generated module (``smf_rpc/...``)."""
        package, _, _ = self.service_fqn.rpartition(".")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            path = Path(location) / f"{self.service_name}_smf.bfbs"
            if path.is_file():
                return path
        return None

    def method_handlers(self) -> Mapping[int, Handler]:
        def lazy(wire_id: int) -> Handler:
            async def handler(ctx: CallContext, body: memoryview) -> Payload:
                return await self._handlers()[0][wire_id](ctx, body)

            handler.__name__ = self.method_names[wire_id].rpartition(".")[2]
            return handler

        unary = (w for w in self.method_names if w not in self.stream_kinds)
        return {wire_id: lazy(wire_id) for wire_id in unary}

    def stream_handlers(self) -> Mapping[int, tuple[str, Any]]:
        def lazy(wire_id: int) -> Any:
            def handler(ctx: CallContext, arg: Any) -> Any:
                return self._handlers()[1][wire_id][1](ctx, arg)

            return handler

        return {wire_id: (kind, lazy(wire_id)) for wire_id, kind in self.stream_kinds.items()}
