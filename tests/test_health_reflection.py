"""The built-in health and reflection services of every smf.Server, and smf_rpc/ being
what smfc generates from idl/health.fbs and idl/reflection.fbs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import smf
from smf.health import CHECK_WIRE_ID, WATCH_WIRE_ID, ServingStatus
from smf.reflection import schema_bytes
from smf_rpc.health import ServingStatus as GeneratedStatus
from smf_rpc.health.Health_smf import HealthClient
from smf_rpc.health.HealthCheckRequest import HealthCheckRequestT
from smf_rpc.reflection.ListServicesRequest import ListServicesRequestT
from smf_rpc.reflection.SchemaRequest import SchemaRequestT
from smf_rpc.reflection.ServerReflection_smf import ServerReflectionClient
from smfc.bfbs import read_schema

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "demo" / "generated"))

from smf_gen.demo import SmfStorage_smf  # noqa: E402
from smf_gen.demo.Request import Request  # noqa: E402
from smf_gen.demo.Response import ResponseT  # noqa: E402


class Storage(SmfStorage_smf.SmfStorage):
    async def Get(self, request: Request, ctx: smf.CallContext) -> ResponseT:
        await asyncio.sleep(float(request.Name() or b"0"))
        return ResponseT(name=request.Name())


@pytest.fixture
async def served() -> AsyncIterator[tuple[smf.Server, smf.Client]]:
    server = smf.Server([Storage()])
    await server.start("127.0.0.1", 0)
    client = smf.Client("127.0.0.1", server.port)
    await client.connect()
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop(grace=0.1)


async def _status(client: smf.Client, service: str = "") -> ServingStatus:
    reply = await HealthClient(client).Check(HealthCheckRequestT(service=service), timeout=5)
    return ServingStatus(reply.Status())


def test_the_status_enum_matches_the_schema() -> None:
    for status in ServingStatus:
        assert getattr(GeneratedStatus.ServingStatus, status.name) == status.value


async def test_health_answers_per_service(served: tuple[smf.Server, smf.Client]) -> None:
    server, client = served
    assert await _status(client) is ServingStatus.SERVING
    assert await _status(client, "SmfStorage") is ServingStatus.SERVING
    assert await _status(client, "smf_gen.demo.SmfStorage") is ServingStatus.SERVING
    assert await _status(client, "Nope") is ServingStatus.SERVICE_UNKNOWN
    assert server.health is not None
    server.health.set_status("SmfStorage", ServingStatus.NOT_SERVING)
    assert await _status(client, "smf_gen.demo.SmfStorage") is ServingStatus.NOT_SERVING
    assert await _status(client) is ServingStatus.SERVING
    server.health.clear_status("SmfStorage")
    server.health.set_status("", ServingStatus.NOT_SERVING)
    assert await _status(client, "SmfStorage") is ServingStatus.NOT_SERVING  # follows the server
    server.health.set_status("batch-jobs", ServingStatus.SERVING)  # any name may be set
    assert await _status(client, "batch-jobs") is ServingStatus.SERVING


async def test_stop_flips_health_to_not_serving_and_still_answers_it_while_draining(
    served: tuple[smf.Server, smf.Client],
) -> None:
    server, client = served
    stub = SmfStorage_smf.SmfStorageClient(client)
    slow = asyncio.ensure_future(stub.Get(_request("0.5"), timeout=10))
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(server.stop(grace=10))
    await asyncio.sleep(0.05)
    assert await _status(client) is ServingStatus.NOT_SERVING
    with pytest.raises(smf.Unavailable):  # other new calls are refused while draining
        await stub.Get(_request("0"), timeout=5)
    assert server.health is not None
    server.health.set_status("", ServingStatus.SERVING)  # ignored once shutting down
    assert await _status(client) is ServingStatus.NOT_SERVING
    assert (await slow).Name() == b"0.5"  # the call in flight finished
    await stopping


async def test_watch_sends_the_status_then_each_change_and_not_serving_on_stop(
    served: tuple[smf.Server, smf.Client],
) -> None:
    server, client = served
    assert server.health is not None
    seen: list[ServingStatus] = []
    watch = HealthClient(client).Watch(HealthCheckRequestT(service="SmfStorage"), timeout=30)

    async def follow() -> None:
        async for reply in watch:
            seen.append(ServingStatus(reply.Status()))
            if len(seen) == 4:
                break

    following = asyncio.ensure_future(follow())

    async def until(n: int) -> None:
        for _ in range(500):
            if len(seen) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"watch saw {seen}, expected {n} updates")

    await until(1)
    server.health.set_status("SmfStorage", ServingStatus.NOT_SERVING)
    await until(2)
    server.health.set_status("Other", ServingStatus.NOT_SERVING)  # not this service
    server.health.clear_status("SmfStorage")  # follows the server again: SERVING
    await until(3)
    await server.stop(grace=1)  # NOT_SERVING first, while calls drain
    await asyncio.wait_for(following, 10)
    assert seen == [
        ServingStatus.SERVING,
        ServingStatus.NOT_SERVING,
        ServingStatus.SERVING,
        ServingStatus.NOT_SERVING,
    ]


def _request(name: str) -> bytes:
    return bytes(SmfStorage_smf.RequestT(name=name).Encode())


async def test_health_and_reflection_can_be_turned_off() -> None:
    server = smf.Server([Storage()], health=False, reflection=False)
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            with pytest.raises(smf.NotFound):
                await _status(client)
            with pytest.raises(smf.NotFound):
                await ServerReflectionClient(client).ListServices(ListServicesRequestT())
        assert server.health is None
        assert [s.service_name for s in server.services] == ["SmfStorage"]
    finally:
        await server.stop(grace=0.1)


async def test_reflection_lists_services_with_wire_ids_and_schema_flags(
    served: tuple[smf.Server, smf.Client],
) -> None:
    _, client = served
    reply = await ServerReflectionClient(client).ListServices(ListServicesRequestT())
    listed = {}
    for i in range(reply.ServicesLength()):
        info = reply.Services(i)
        assert info is not None
        methods = {}
        for j in range(info.MethodsLength()):
            method = info.Methods(j)
            assert method is not None
            methods[method.Name()] = method.WireId()
        listed[info.Name()] = (info.Fqn(), info.HasSchema(), methods)
    assert listed[b"Health"] == (b"smf_rpc.health.Health", True, {b"Check": CHECK_WIRE_ID})
    # The shipped demo stubs carry their .bfbs (smfc writes it by default).
    assert listed[b"SmfStorage"] == (
        b"smf_gen.demo.SmfStorage",
        True,
        {b"Get": SmfStorage_smf.Get_WIRE_ID, b"Put": SmfStorage_smf.Put_WIRE_ID},
    )
    assert b"ServerReflection" in listed


async def test_reflection_returns_the_bfbs_a_service_came_from(
    served: tuple[smf.Server, smf.Client],
) -> None:
    _, client = served
    stub = ServerReflectionClient(client)
    reply = await stub.GetSchema(SchemaRequestT(service="Health"))
    data = schema_bytes(reply)
    assert data == (REPO / "smf_rpc" / "health" / "Health_smf.bfbs").read_bytes()
    service = read_schema(data).services["smf_rpc.health.Health"]
    assert service.wire_id(service.methods[0]) == CHECK_WIRE_ID
    # The demo's stubs carry S_smf.bfbs (a service without one is tested in test_cli_tools).
    demo = schema_bytes(await stub.GetSchema(SchemaRequestT(service="SmfStorage")))
    assert "smf_gen.demo.SmfStorage" in read_schema(demo).services
    with pytest.raises(smf.NotFound, match="no service named 'Nope'"):
        await stub.GetSchema(SchemaRequestT(service="Nope"))


async def test_a_service_may_name_its_schema() -> None:
    storage = Storage()
    bfbs = (REPO / "smf_rpc" / "health" / "Health_smf.bfbs").read_bytes()  # any bytes will do
    storage.schema_bfbs = bfbs  # type: ignore[attr-defined]
    server = smf.Server([storage])
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            reply = await ServerReflectionClient(client).GetSchema(
                SchemaRequestT(service="smf_gen.demo.SmfStorage")
            )
            assert schema_bytes(reply) == bfbs
    finally:
        await server.stop(grace=0.1)


def test_builtin_wire_ids_are_the_generated_ones() -> None:
    from smf import reflection
    from smf_rpc.health import Health_smf
    from smf_rpc.reflection import ServerReflection_smf

    assert Health_smf.Check_WIRE_ID == CHECK_WIRE_ID
    assert Health_smf.Watch_WIRE_ID == WATCH_WIRE_ID
    assert ServerReflection_smf.ListServices_WIRE_ID == reflection.LIST_SERVICES_WIRE_ID
    assert ServerReflection_smf.GetSchema_WIRE_ID == reflection.GET_SCHEMA_WIRE_ID
    server = smf.Server()
    assert server.methods.names[CHECK_WIRE_ID] == "Health.Check"


def test_a_server_loads_the_builtin_stubs_only_when_asked() -> None:
    """flatbuffers imports numpy (~15 MiB of RSS): a server must not pay it up front."""
    import subprocess

    code = (
        "import sys, smf; smf.Server(); "
        "print(sorted(m for m in ('flatbuffers', 'numpy', 'smf_rpc.health.Health_smf') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
