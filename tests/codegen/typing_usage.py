"""User code against the generated corpus, type-checked by test_smfc_output with mypy --strict.

Lines marked ``# E: code`` must be reported with that error code, and nothing else may be:
the generated types are precise enough to catch these mistakes.
"""

# mypy: disable-error-code="import-untyped"
from __future__ import annotations

import flatbuffers
from corpus.common.Circle import Circle, CircleT
from corpus.common.Empty import Empty, EmptyT
from corpus.common.Point import Point
from corpus.common.Shape import Shape, ShapeCreator
from corpus.geo.deep.Figure import Figure, FigureT
from corpus.geo.deep.Geometry_smf import Draw_WIRE_ID, Geometry, GeometryClient
from corpus.geo.deep.Shapes_smf import Shapes
from corpus.plain.Record import Record, RecordT
from multi.a.Item import Item as AItem
from multi.b.Item import ItemT as BItemT
from multi.Store_smf import Store
from smf_gen.demo.Request import Request, RequestT
from smf_gen.demo.Response import Response, ResponseT
from smf_gen.demo.SmfStorage_smf import SmfStorage, SmfStorageClient, verify_Request

import smf
from smf.verify import VerificationError, Verifier, verify_buffer


class Storage(SmfStorage):
    async def Get(self, request: Request, ctx: smf.CallContext) -> ResponseT:
        name: bytes | None = request.Name()
        return ResponseT(name=name)

    async def Put(self, request: Request, ctx: smf.CallContext) -> Response | ResponseT | bytes:
        return bytes(8)


class Geo(Geometry):
    async def Draw(self, request: Point, ctx: smf.CallContext) -> FigureT:
        pos = request.Pos()
        figure = FigureT(name="f", shapeType=Shape.Circle, shape=CircleT(radius=1.0))
        if pos is not None:
            figure.id = int(pos.X())
        figure.points = []
        return figure

    async def Ping(self, request: Empty, ctx: smf.CallContext) -> Empty:
        return request  # a table is forwarded as is


class Area(Shapes):
    async def Area(self, request: Figure, ctx: smf.CallContext) -> memoryview:
        builder = flatbuffers.Builder(64)
        builder.Finish(CircleT(radius=float(request.PointsLength())).Pack(builder))
        return memoryview(builder.Bytes)[builder.Head() :]


class Items(Store):
    async def Item(self, request: AItem, ctx: smf.CallContext) -> BItemT:
        return BItemT(count=len(request.Name() or b""))


async def client_side(client: smf.Client) -> None:
    storage = SmfStorageClient(client)
    response: Response = await storage.Get(RequestT(name="x"), timeout=1.0)
    maybe: bytes | None = response.Name()
    await storage.Put(b"\x04\x00\x00\x00", metadata={"k": "v"})
    geometry = GeometryClient(client)
    figure = await geometry.Draw(bytearray(16), timeout=None)
    circle = ShapeCreator(figure.ShapeType(), figure.Shape())
    if isinstance(circle, CircleT):
        radius: float = circle.radius
    record = RecordT.InitFromObj(Record.GetRootAs(memoryview(bytearray(32))))
    labels: list[str | bytes] | None = record.labels
    level: int = record.level
    assert Draw_WIRE_ID and maybe and radius and labels and level
    circle_table: Circle = Circle.GetRootAs(bytes(16), 0)
    circle_table.Radius()


def verification(client: smf.Client, body: memoryview) -> None:
    trusted = Storage(verify=False)
    checked: bool = trusted.verify and Geo().verify
    checking = SmfStorageClient(client, verify_responses=True)
    try:
        Verifier(body, max_tables=1000).root(verify_Request)
        verify_buffer(bytes(body), verify_Request, max_depth=8)
    except VerificationError as err:
        where: str = err.where
        offset: int = err.offset
        assert where and offset and checked and checking


# Mistakes the types catch -------------------------------------------------------------


class Wrong(SmfStorage):
    async def Get(self, request: Request, ctx: smf.CallContext) -> str:  # E: override
        return "no"


async def over_a_channel(channel: smf.Channel) -> None:
    # A Channel is accepted wherever a Client is (both meet smf.Caller).
    response: Response = await SmfStorageClient(channel).Get(RequestT(name="x"))
    print(response.Name())


async def mistakes(client: smf.Client, request: Request) -> None:
    request.Name().decode()  # E: union-attr
    text: str = request.Name() or b""  # E: assignment
    print(text)
    await SmfStorageClient(client).Get("name")  # E: arg-type
    await SmfStorageClient(client).Get(RequestT(), timeout="1")  # E: arg-type
    EmptyT(name="x")  # E: call-arg
    Storage(False)  # E: call-arg
    SmfStorageClient(client, True)  # E: call-arg
    verify_buffer(b"", Request)  # E: arg-type
