"""The base of the services every server has built in (health, reflection): their
generated stubs, and with them ``flatbuffers`` (which imports numpy, ~15 MiB), load on
their first call, so a server that is never asked pays nothing for them."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from .context import CallContext
from .router import Handler, Payload


class LazyService:
    """An ``smf.Service`` whose handlers are built by ``build()`` on the first call."""

    service_name: str
    service_fqn: str
    method_names: Mapping[int, str]  # wire id -> "Service.Method"

    def __init__(self) -> None:
        self._handlers: Mapping[int, Handler] | None = None

    def build(self) -> Mapping[int, Handler]:
        raise NotImplementedError

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
                if self._handlers is None:
                    self._handlers = self.build()
                return await self._handlers[wire_id](ctx, body)

            handler.__name__ = self.method_names[wire_id].rpartition(".")[2]
            return handler

        return {wire_id: lazy(wire_id) for wire_id in self.method_names}
