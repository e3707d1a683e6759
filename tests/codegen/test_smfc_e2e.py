"""Generated servers and clients over real sockets on 127.0.0.1, flatc as the oracle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from smfc_testlib import (
    DATA,
    IDL,
    REPO,
    SCHEMAS,
    flatc_binary,
    flatc_json,
    imported_from,
)

import smf

pytest_plugins = ["smfc_testlib"]  # its fixtures: smfc_corpus, flatc_exe


@pytest.fixture
def gen(smfc_corpus: Path) -> Iterator[Callable[[str], Any]]:
    """Import a generated module of the corpus by name."""
    with imported_from(smfc_corpus) as load:
        yield load


@contextlib.asynccontextmanager
async def serving(*services: Any, **options: Any) -> AsyncIterator[tuple[smf.Server, smf.Client]]:
    server = smf.Server(**options)
    for service in services:
        server.add_service(service)
    await server.start("127.0.0.1", 0)
    try:
        async with smf.Client("127.0.0.1", server.port) as client:
            yield server, client
    finally:
        await server.stop(grace=1.0)


def storage_impl(gen: Callable[[str], Any]) -> Any:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    ResponseT = gen("smf_gen.demo.Response").ResponseT

    class Storage(stub.SmfStorage):  # type: ignore[misc]
        seen: list[bytes | None]

        def __init__(self) -> None:
            self.seen = []

        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            self.seen.append(request.Name())
            return ResponseT(name=b"got:" + (request.Name() or b""))

        async def Put(self, request: Any, ctx: smf.CallContext) -> Any:
            # A finished FlatBuffer, built by hand, is sent as it is.
            builder = flatbuffers.Builder(64)
            name = builder.CreateString(request.Name() or b"")
            builder.StartObject(1)
            builder.PrependUOffsetTRelativeSlot(0, name, 0)
            builder.Finish(builder.EndObject())
            return bytes(builder.Output())

    return Storage()


async def test_get_and_put_through_the_stubs(gen: Callable[[str], Any]) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    RequestT = gen("smf_gen.demo.Request").RequestT
    Response = gen("smf_gen.demo.Response").Response
    impl = storage_impl(gen)
    async with serving(impl) as (_, client):
        storage = stub.SmfStorageClient(client)
        got = await storage.Get(RequestT(name="alpha"))
        assert isinstance(got, Response)
        assert got.Name() == b"got:alpha"
        put = await storage.Put(RequestT(name="beta"), timeout=5.0)
        assert put.Name() == b"beta"
        assert impl.seen == [b"alpha"]


async def test_client_stub_names_its_methods_in_the_client_metrics(
    gen: Callable[[str], Any],
) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    async with serving(storage_impl(gen)) as (_, client):
        await stub.SmfStorageClient(client).Get(gen("smf_gen.demo.Request").RequestT(name="n"))
        names = {m.name for m in client.methods}
        assert "SmfStorage.Get" in names
        assert str(stub.Get_WIRE_ID) not in names


async def test_oracle_encoded_request_and_decoded_response(
    gen: Callable[[str], Any], flatc_exe: str, tmp_path: Path
) -> None:
    """A request built by ``flatc -b`` from JSON is served; ``flatc_exe --json`` reads the reply."""
    stub = gen("smf_gen.demo.SmfStorage_smf")
    payload = flatc_binary(
        flatc_exe,
        IDL / "demo.fbs",
        DATA / "request.json",
        tmp_path,
        "--root-type",
        "smf_gen.demo.Request",
    )
    impl = storage_impl(gen)
    async with serving(impl) as (_, client):
        for method, expected in (("Get", "got:from the flatc oracle"), ("Put", None)):
            response = await getattr(stub.SmfStorageClient(client), method)(payload)
            body = bytes(response._buf)
            decoded = json.loads(
                flatc_json(
                    flatc_exe, IDL / "demo.fbs", body, "smf_gen.demo.Response", tmp_path / method
                )
            )
            assert decoded == {"name": expected or "from the flatc oracle"}
    assert impl.seen == [b"from the flatc oracle"]


async def test_unknown_method_is_404_through_the_stubs(gen: Callable[[str], Any]) -> None:
    shapes = gen("corpus.geo.deep.Shapes_smf")
    FigureT = gen("corpus.geo.deep.Figure").FigureT
    async with serving(storage_impl(gen)) as (_, client):
        with pytest.raises(smf.NotFound) as caught:
            await shapes.ShapesClient(client).Area(FigureT(name="f"))
        assert caught.value.status == 404
        assert str(shapes.Area_WIRE_ID) in caught.value.message


async def test_method_not_overridden_is_501(gen: Callable[[str], Any]) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    RequestT = gen("smf_gen.demo.Request").RequestT
    ResponseT = gen("smf_gen.demo.Response").ResponseT

    class OnlyGet(stub.SmfStorage):  # type: ignore[misc]
        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            return ResponseT(name=request.Name())

    async with serving(OnlyGet()) as (_, client):
        storage = stub.SmfStorageClient(client)
        assert (await storage.Get(RequestT(name="ok"))).Name() == b"ok"
        with pytest.raises(smf.Unimplemented) as caught:
            await storage.Put(RequestT(name="no"))
        assert caught.value.status == 501
        assert "SmfStorage.Put is not implemented" in caught.value.message


class _Recorder:
    """Wraps a generated service's handlers to keep the body each one was given."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.service_name = service.service_name
        self.bodies: list[memoryview] = []

    def method_handlers(self) -> Mapping[int, smf.Handler]:
        def wrap(
            handler: Callable[[smf.CallContext, memoryview], Awaitable[smf.Payload]],
        ) -> smf.Handler:
            async def recorded(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
                self.bodies.append(body)
                return await handler(ctx, body)

            return recorded

        return {wire_id: wrap(h) for wire_id, h in self.service.method_handlers().items()}


@pytest.mark.parametrize("metadata", [None, {"trace": "abc"}])
async def test_request_table_is_a_view_of_the_receive_buffer(
    gen: Callable[[str], Any], metadata: dict[str, str] | None
) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    RequestT = gen("smf_gen.demo.Request").RequestT
    ResponseT = gen("smf_gen.demo.Response").ResponseT
    seen: dict[str, Any] = {}

    class Inspect(stub.SmfStorage):  # type: ignore[misc]
        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            buf = request._buf
            seen.update(buf=buf, obj=buf.obj, name=request.Name(), metadata=dict(ctx.metadata))
            return ResponseT(name=request.Name())

    recorder = _Recorder(Inspect())
    async with serving(recorder, buffer_size=64 * 1024) as (server, client):
        response = await stub.SmfStorageClient(client).Get(
            RequestT(name="zero copy"), metadata=metadata
        )
        assert response.Name() == b"zero copy"
        # The client's response table reads the client's receive buffer, too.
        assert isinstance(response._buf, memoryview)
        assert isinstance(response._buf.obj, bytearray)
        assert len(response._buf.obj) >= client.buffer_size
    (body,) = recorder.bodies
    assert seen["buf"] is body  # GetRootAs kept the runtime's view itself: no copy
    assert isinstance(seen["obj"], bytearray)  # a writable receive buffer, not bytes
    assert len(seen["obj"]) >= server.buffer_size == 64 * 1024
    assert seen["name"] == b"zero copy"
    assert seen["metadata"] == (metadata or {})


async def test_returned_request_table_is_forwarded_as_is(
    gen: Callable[[str], Any], flatc_exe: str, tmp_path: Path
) -> None:
    """Echo(Thing): Thing returning its request: the reply is the request's own bytes."""
    stub = gen("Thing_smf")
    forwarded: list[Any] = []

    class Echo(stub.Thing):  # type: ignore[misc]
        async def Echo(self, request: Any, ctx: smf.CallContext) -> Any:
            encoded = stub._encode__Thing(request)  # the table class is aliased _Thing
            forwarded.append(encoded.obj is request._buf.obj)
            return request

    payload = flatc_binary(flatc_exe, SCHEMAS / "multi.fbs", DATA / "thing.json", tmp_path)
    async with serving(Echo()) as (_, client):
        reply = await stub.ThingClient(client).Echo(payload)
        assert bytes(reply._buf) == payload
        assert reply.Peer().Things(1).Id() == 4
    assert forwarded == [True]


async def test_several_services_on_one_server(gen: Callable[[str], Any]) -> None:
    geometry = gen("corpus.geo.deep.Geometry_smf")
    other = gen("corpus.other.Geometry_smf")
    shapes = gen("corpus.geo.deep.Shapes_smf")
    FigureT = gen("corpus.geo.deep.Figure").FigureT
    CircleT = gen("corpus.common.Circle").CircleT
    Shape = gen("corpus.common.Shape")
    PointT = gen("corpus.common.Point").PointT
    Vec3T = gen("corpus.common.Vec3").Vec3T
    NoteT = gen("corpus.other.Note").NoteT
    EmptyT = gen("corpus.common.Empty").EmptyT

    class Geo(geometry.Geometry):  # type: ignore[misc]
        async def Draw(self, request: Any, ctx: smf.CallContext) -> Any:
            pos = request.Pos()
            return FigureT(
                id=int(pos.X()),
                name="drawn",
                shapeType=Shape.Shape.Circle,
                shape=CircleT(radius=pos.Y()),
                points=[PointT(pos=Vec3T(pos.X(), pos.Y(), pos.Z()))],
            )

        async def Ping(self, request: Any, ctx: smf.CallContext) -> Any:
            return request

    class Notes(other.Geometry):  # type: ignore[misc]
        async def Annotate(self, request: Any, ctx: smf.CallContext) -> Any:
            return FigureT(name=request.Text())

    class Areas(shapes.Shapes):  # type: ignore[misc]
        async def Area(self, request: Any, ctx: smf.CallContext) -> Any:
            return CircleT(radius=float(request.PointsLength()))

    async with serving(Geo(), Notes(), Areas()) as (_, client):
        figure = await geometry.GeometryClient(client).Draw(PointT(pos=Vec3T(3.0, 4.0, 5.0)))
        assert (figure.Id(), figure.Name(), figure.ShapeType()) == (3, b"drawn", 1)
        circle = Shape.ShapeCreator(figure.ShapeType(), figure.Shape())
        assert isinstance(circle, CircleT) and circle.radius == 4.0
        assert figure.Points(0).Pos().Z() == 5.0
        empty = await geometry.GeometryClient(client).Ping(EmptyT())
        assert bytes(empty._buf)
        note = await other.GeometryClient(client).Annotate(NoteT(text="hi"))
        assert note.Name() == b"hi"
        area = await shapes.ShapesClient(client).Area(FigureT(name="x", points=[PointT()] * 3))
        assert area.Radius() == 3.0
        # A table from one call is a valid request of another: forwarded without a copy.
        area_again = await shapes.ShapesClient(client).Area(figure)
        assert area_again.Radius() == 1.0


async def test_errors_reach_the_client_typed(gen: Callable[[str], Any]) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    RequestT = gen("smf_gen.demo.Request").RequestT

    class Failing(stub.SmfStorage):  # type: ignore[misc]
        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            raise smf.BadRequest(f"no {request.Name().decode()}")

        async def Put(self, request: Any, ctx: smf.CallContext) -> Any:
            raise ValueError("broken")

    async with serving(Failing()) as (_, client):
        storage = stub.SmfStorageClient(client)
        with pytest.raises(smf.BadRequest, match="no thanks"):
            await storage.Get(RequestT(name="thanks"))
        with pytest.raises(smf.InternalError, match="ValueError: broken"):
            await storage.Put(RequestT(name="x"))
        # Bytes that cannot be a FlatBuffer never reach the method.
        with pytest.raises(smf.BadRequest, match="not a FlatBuffer"):
            await storage.Get(b"\x01\x02\x03")
        with pytest.raises(smf.BadRequest):
            await client.call(stub.Get_WIRE_ID, b"\xff\xff\x00\x00" + bytes(12))


async def test_timeout_and_concurrency(gen: Callable[[str], Any]) -> None:
    stub = gen("smf_gen.demo.SmfStorage_smf")
    RequestT = gen("smf_gen.demo.Request").RequestT
    ResponseT = gen("smf_gen.demo.Response").ResponseT

    class Slow(stub.SmfStorage):  # type: ignore[misc]
        async def Get(self, request: Any, ctx: smf.CallContext) -> Any:
            await asyncio.sleep(0.002)
            return ResponseT(name=request.Name())

        async def Put(self, request: Any, ctx: smf.CallContext) -> Any:
            await asyncio.sleep(5)
            raise AssertionError("not reached")

    async with serving(Slow()) as (_, client):
        storage = stub.SmfStorageClient(client)
        with pytest.raises(smf.DeadlineExceeded):
            await storage.Put(RequestT(name="late"), timeout=0.05)
        names = [f"n{i}".encode() for i in range(200)]
        replies = await asyncio.gather(*(storage.Get(RequestT(name=n)) for n in names))
        assert [r.Name() for r in replies] == names


def test_demo_example_scripts() -> None:
    """examples/demo/server.py and client.py, as a user runs them."""
    demo = REPO / "examples" / "demo"
    server = subprocess.Popen(
        [sys.executable, str(demo / "server.py"), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("SmfStorage listening on 127.0.0.1:"), line
        port = line.rsplit(":", 1)[1].strip()
        client = subprocess.run(
            [sys.executable, str(demo / "client.py"), "--port", port, "--name", "demo"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert client.returncode == 0, client.stderr
        assert "Get('demo') -> 'demo'  (wire id 1792279101)" in client.stdout
        assert "Put('demo') -> 'demo'" in client.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0, server.stderr.read() if server.stderr else ""
