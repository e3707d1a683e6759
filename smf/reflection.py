"""The reflection service (``idl/reflection.fbs``): what a server serves, and the binary
schemas (``.bfbs``) its services came from, so ``smf list`` and ``smf call`` need no
``.fbs`` at hand.

A service's schema is found, in order: its ``schema_bfbs`` attribute (the bytes of a
``.bfbs``, or a path to one), then ``S_smf.bfbs`` next to the generated module its class
derives from (``smfc`` writes it unless given ``--no-bfbs``). Services with neither
still list their name and methods (wire ids, method names), with ``has_schema`` false.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .builtin import LazyService
from .errors import NotFound
from .router import Payload

if TYPE_CHECKING:
    from .context import CallContext
    from .server import Server

__all__ = ["ReflectionService", "schema_bytes", "schema_of"]


def schema_of(service: object) -> tuple[str, bytes | None]:
    """(qualified name, binary schema) of ``service``; ``""`` and None when unknown."""
    cached: tuple[str, bytes | None] | None = getattr(service, "_smf_schema", None)
    if cached is not None:
        return cached
    fqn = str(getattr(service, "service_fqn", ""))
    data: bytes | None = None
    name = getattr(service, "service_name", "")
    for cls in type(service).__mro__ if not fqn else ():
        module = sys.modules.get(cls.__module__)
        if getattr(module, "SERVICE_NAME", None) == name and hasattr(module, "SERVICE_FQN"):
            fqn = str(module.SERVICE_FQN)  # type: ignore[union-attr]
            file = getattr(module, "__file__", None)
            if file is not None:
                data = _read(Path(file).with_suffix(".bfbs"))
            break
    explicit = getattr(service, "schema_bfbs", None)
    if isinstance(explicit, bytes | bytearray):
        data = bytes(explicit)
    elif isinstance(explicit, str | os.PathLike):
        data = Path(explicit).read_bytes()  # named by the user: a missing file is an error
    result = (fqn, data)
    with contextlib.suppress(AttributeError):  # __slots__: look it up again next time
        service._smf_schema = result  # type: ignore[attr-defined]
    return result


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def schema_bytes(response: Any) -> bytes:
    """The ``bfbs`` vector of a ``smf_rpc.reflection.SchemaResponse`` as bytes (one copy
    of the generated reader's zero-copy view)."""
    return bytes(response.BfbsAsBytes())


LIST_SERVICES_WIRE_ID: Final = 2183911226
GET_SCHEMA_WIRE_ID: Final = 4085497652
"""``smf_rpc.reflection.ServerReflection_smf``'s wire ids (a test checks)."""


class ReflectionService(LazyService):
    """Lists ``server.services`` and returns their binary schemas."""

    service_name = "ServerReflection"
    service_fqn = "smf_rpc.reflection.ServerReflection"
    method_names: Mapping[int, str] = {
        LIST_SERVICES_WIRE_ID: "ServerReflection.ListServices",
        GET_SCHEMA_WIRE_ID: "ServerReflection.GetSchema",
    }

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server

    def build(self) -> Any:
        from smf_rpc.reflection.ListServicesRequest import ListServicesRequest
        from smf_rpc.reflection.SchemaRequest import SchemaRequest
        from smf_rpc.reflection.ServerReflection_smf import ServerReflection

        outer = self

        class Implementation(ServerReflection):
            async def ListServices(self, request: ListServicesRequest, ctx: CallContext) -> Any:
                return outer.list_services()

            async def GetSchema(self, request: SchemaRequest, ctx: CallContext) -> Payload:
                raw = request.Service()
                return outer.get_schema(raw.decode("utf-8", "replace") if raw else "")

        return Implementation()

    def list_services(self) -> Any:
        from smf_rpc.reflection.ListServicesResponse import ListServicesResponseT
        from smf_rpc.reflection.MethodInfo import MethodInfoT
        from smf_rpc.reflection.ServiceInfo import ServiceInfoT

        infos = []
        for service in self._server.services:
            fqn, data = schema_of(service)
            names: Mapping[int, str] = getattr(service, "method_names", {})
            methods = []
            for wire_id, handler in sorted(service.method_handlers().items()):
                full = names.get(wire_id) or str(getattr(handler, "__name__", wire_id))
                methods.append(MethodInfoT(name=full.split(".", 1)[-1], wireId=wire_id))
            infos.append(
                ServiceInfoT(
                    name=service.service_name,
                    fqn=fqn,
                    methods=methods,
                    hasSchema=data is not None,
                )
            )
        return ListServicesResponseT(services=infos)

    def get_schema(self, wanted: str) -> Payload:
        import flatbuffers

        from smf_rpc.reflection import SchemaResponse as response

        for service in self._server.services:
            fqn, data = schema_of(service)
            if wanted not in (service.service_name, fqn):
                continue
            if data is None:
                raise NotFound(
                    f"the server has no schema for {wanted!r} (generate it with "
                    "smfc without --no-bfbs, or set the service's schema_bfbs)"
                )
            builder = flatbuffers.Builder(len(data) + 256)
            vector = builder.CreateByteVector(data)
            name = builder.CreateString(fqn or service.service_name)
            response.Start(builder)
            response.AddFqn(builder, name)
            response.AddBfbs(builder, vector)
            builder.Finish(response.End(builder))
            return memoryview(builder.Bytes)[builder.Head() :]
        raise NotFound(f"the server serves no service named {wanted!r}")
