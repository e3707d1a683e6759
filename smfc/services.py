"""Checks services against smf's rules and renders their stub modules (``S_smf.py``)."""

from __future__ import annotations

import keyword
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

import jinja2

from .layout import parameter, parenthesized
from .model import Method, Object, Schema, Service
from .tables import ImportTable, module_of
from .verifiers import plan, render_union

STUB_SUFFIX = "_smf"

STREAMING_KINDS = ("none", "server", "client", "bidi")
"""FlatBuffers' own ``streaming`` attribute of an rpc method (as flatc's gRPC generator
reads it); ``"none"`` or absent is a unary call."""

# Names the generated classes define themselves (a method may not take them).
RESERVED_METHOD_NAMES = frozenset(
    {"service_name", "method_handlers", "stream_handlers", "client", "verify", "verify_responses"}
)

# Module-level names every stub module binds (an imported type must not shadow them).
_MODULE_NAMES = frozenset(
    {
        # imports
        "annotations",
        "CallContext",
        "Client",
        "DEFAULT",
        "Final",
        "Handler",
        "Mapping",
        "Payload",
        "check_request",
        "encode",
        "name_methods",
        "OUT_OF_BOUNDS",
        "VerificationError",
        "vtable_reader",
        "unpacker",
        "Default",
        "Verifier",
        "VerifyFn",
        # imports of services with streaming methods
        "AsyncIterable",
        "AsyncIterator",
        "Iterable",
        "StreamHandler",
        "TypedStream",
        "client_stream_typed",
        "decoded",
        "encoded",
        # constants and helpers
        "METHOD_NAMES",
        "SERVICE_FQN",
        "SERVICE_ID",
        "SERVICE_NAME",
        "_unimplemented",
    }
)


def stub_module(service: Service) -> str:
    """The module smfc writes a service's stubs into: ``<namespace>.<Service>_smf``."""
    return ".".join((*service.namespace, service.short_name + STUB_SUFFIX))


def problems(schema: Schema) -> list[str]:
    """What smf cannot serve or Python cannot name, one message per fault."""
    out: list[str] = []
    owners: dict[int, str] = {}
    type_modules = {module_of(q) for q in (*schema.objects, *schema.enums)}
    for service in sorted(schema.services.values(), key=lambda s: s.name):
        where = f"rpc_service {service.name}"
        if service.declaration_file:
            where += f" ({service.declaration_file})"
        for part in service.name.split("."):
            if keyword.iskeyword(part):
                out.append(f"{where}: {part!r} is a Python keyword")
        for cls in (service.short_name, service.short_name + "Client"):
            if cls in _MODULE_NAMES:
                out.append(f"{where}: its class {cls} would hide a name the stub module needs")
        if stub_module(service) in type_modules:
            out.append(
                f"{where}: its stub module {stub_module(service)} has the name of a type's module"
            )
        for method in service.methods:
            at = f"{where}: method {method.name}"
            if keyword.iskeyword(method.name):
                out.append(f"{at}: {method.name!r} is a Python keyword")
            elif method.name in RESERVED_METHOD_NAMES | _MODULE_NAMES or (
                method.name.startswith("__") and method.name.endswith("__")
            ):
                out.append(f"{at}: the name is taken by the generated classes")
            streaming = method.attributes.get("streaming", "none")
            if streaming not in STREAMING_KINDS:
                kinds = ", ".join(f'"{k}"' for k in STREAMING_KINDS)
                out.append(f"{at}: streaming must be one of {kinds}, not {streaming!r}")
            wire_id = service.wire_id(method)
            owner = f"{service.name}.{method.name}"
            if wire_id in owners:
                out.append(f"{at}: wire id {wire_id} is also the wire id of {owners[wire_id]}")
            else:
                owners[wire_id] = owner
    return out


@dataclass
class _MethodView:
    name: str
    method_id: int
    wire_id: int
    id_text: str
    request: str  # local class names
    request_t: str
    response: str
    response_t: str
    verify_request: str  # the verifiers' names
    verify_response: str
    server_doc: str  # rendered docstrings
    client_doc: str
    server_returns: str  # rendered lines: the server method's return annotation
    client_request: str  # and the client method's request parameter
    streaming: str = "none"  # "server", "client", "bidi" (STREAMING_KINDS)
    stream_lines: dict[str, str] = field(default_factory=dict)  # rendered, streams only


@dataclass
class _ServiceView:
    source_file: str
    fqn: str
    name: str
    client: str
    service_id: int
    imports: list[str]
    methods: list[_MethodView]
    module_doc: str = ""
    server_doc: str = ""
    client_doc: str = ""
    encoders: list[tuple[str, str, str]] = field(default_factory=list)  # (fn, table, T)
    verifiers: list[str] = field(default_factory=list)  # rendered union maps
    verify_fn: bool = False  # a union map is empty (annotated with VerifyFn)

    @property
    def has_streams(self) -> bool:
        return any(m.streaming != "none" for m in self.methods)

    @property
    def stream_imports(self) -> tuple[str, str]:
        """What a module with streaming methods imports from ``collections.abc`` and
        from ``smf.stubs`` (exactly what its kinds of methods use)."""
        kinds = {m.streaming for m in self.methods}
        abc = {"AsyncIterator", "Mapping"}
        names = {"StreamHandler", "streaming"}
        if kinds & {"server", "bidi"}:
            names |= {"TypedStream", "encoded"}
        if kinds & {"client", "bidi"}:
            names.add("decoded")
        if "client" in kinds:
            abc |= {"AsyncIterable", "Iterable"}
            names.add("client_stream_typed")
        return ", ".join(sorted(abc)), ", ".join(sorted(names))


def docstring(lines: Iterable[str], indent: str = "") -> str:
    """A docstring at ``indent`` holding ``lines`` (blank ones separate paragraphs), each
    wrapped to 100 columns on its own so that the schema's line breaks survive."""
    width = 100 - len(indent)
    out: list[str] = []
    for i, line in enumerate(lines):
        text = line.replace("\\", "\\\\").replace('"""', "'''").rstrip()
        if not text:
            out.append("")
            continue
        out += textwrap.wrap(
            text,
            width=width,
            initial_indent='"""' if i == 0 else "",
            break_long_words=False,
            break_on_hyphens=False,
        )
    while out and not out[-1]:
        out.pop()
    if len(out) == 1 and len(out[0]) + 3 > width:
        # ruff puts the closing quotes of a one-line docstring on its line: make it two.
        out = textwrap.wrap(out[0], width=width - 3, break_long_words=False, break_on_hyphens=False)
    if len(out) == 1 and len(out[0]) + 3 <= width and not out[0].endswith('"'):
        return f'{indent}{out[0]}"""'
    body = "\n".join(f"{indent}{line}" if line else "" for line in out)
    return f'{body}\n{indent}"""'


_SERVER_DOC = (
    "A method gets the request as a table over the connection's receive buffer (no copy; "
    "valid until the method returns) and returns a finished FlatBuffer (bytes-like, sent as "
    "is), an object-API instance (packed for you) or a table (sent as is when it is the root "
    "of its buffer, such as a request). Methods not overridden answer 501."
)
_CLIENT_DOC = (
    "A method takes the request as a finished FlatBuffer (bytes-like), an object-API "
    "instance or a table, and returns the response table over the client's receive buffer "
    "(valid while you hold it). Non-200 statuses raise ``smf.RpcError`` subclasses. "
    "``timeout`` and ``metadata`` are those of ``smf.Client.call``."
)


def _with_docs(first: str, docs: tuple[str, ...], *rest: str) -> list[str]:
    lines = [first]
    if docs:
        lines += ["", *docs]
    for paragraph in rest:
        lines += ["", paragraph]
    return lines


def _view(service: Service, schema: Schema) -> _ServiceView:
    name = service.short_name
    client = name + "Client"
    method_names = {m.name for m in service.methods}
    roots = [obj for m in service.methods for obj in (m.request, m.response)]
    verifiers, tables, unions = plan(schema, roots)
    taken = {*_MODULE_NAMES, *method_names, name, client, *RESERVED_METHOD_NAMES}
    taken |= verifiers.names()
    for m in service.methods:
        taken.update({f"{m.name}_METHOD_ID", f"{m.name}_WIRE_ID"})
    imports = ImportTable(taken)
    # Every reachable table's verifier, from its table's module: the methods' requests
    # and responses are verified, the others re-exported (``S_smf.verify_T`` for each
    # table the service reaches) with the maps of the unions on the way.
    for obj in tables:
        verify = verifiers.functions[obj.name]
        imports.member(obj.name, f"verify_{obj.short_name}", verify, export=True)

    def local(obj: Object, suffix: str = "") -> str:
        return imports.name(obj.name, suffix)

    methods = []
    for m in service.methods:  # every method's request, then its response: a stable order
        lines = _with_docs(f"``{_signature(service, m)}``.", m.documentation)
        methods.append(
            _MethodView(
                name=m.name,
                method_id=m.method_id,
                wire_id=service.wire_id(m),
                id_text=m.id_text,
                request=local(m.request),
                request_t=local(m.request, "T"),
                response=local(m.response),
                response_t=local(m.response, "T"),
                verify_request=verifiers.functions[m.request.name],
                verify_response=verifiers.functions[m.response.name],
                server_doc=docstring(lines, " " * 8),
                client_doc=docstring(lines, " " * 8),
                server_returns="\n".join(
                    parenthesized(
                        "    ",
                        ") -> ",
                        f"{local(m.response)} | {local(m.response, 'T')} | Payload",
                        ":",
                    )
                ),
                client_request="\n".join(
                    parameter(
                        " " * 8,
                        "request",
                        f"{local(m.request)} | {local(m.request, 'T')} | Payload",
                        ",",
                    )
                ),
                streaming=m.attributes.get("streaming", "none"),
            )
        )
        if methods[-1].streaming != "none":
            methods[-1].stream_lines = _stream_lines(methods[-1])
    view = _ServiceView(
        source_file=service.declaration_file,
        fqn=service.name,
        name=name,
        client=client,
        service_id=service.service_id,
        imports=imports.lines(),
        methods=methods,
        module_doc=docstring(
            _with_docs(
                f"smf stubs for ``rpc_service {service.name}``.",
                service.documentation,
                f"The server side is ``{name}``: subclass it, override the methods you serve "
                "and pass an instance to ``smf.Server.add_service``. The client side is "
                f"``{client}``, over an ``smf.Client``.",
            )
        ),
        server_doc=docstring(
            [
                f"The server side of ``{service.name}``: override the methods you serve.",
                "",
                _SERVER_DOC,
            ],
            " " * 4,
        ),
        client_doc=docstring(
            [f"The client side of ``{service.name}`` over an ``smf.Client``.", "", _CLIENT_DOC],
            " " * 4,
        ),
    )
    view.verifiers = [render_union(schema, verifiers, union) for union in unions]
    view.verify_fn = any("VerifyFn" in code for code in view.verifiers)
    seen: set[str] = set()
    for mv in methods:
        for table, table_t in ((mv.request, mv.request_t), (mv.response, mv.response_t)):
            if table not in seen:
                seen.add(table)
                view.encoders.append((f"_encode_{table}", table, table_t))
    return view


def _stream_lines(m: _MethodView) -> dict[str, str]:
    """The annotations of a streaming method's signatures, laid out as ruff would."""
    request = f"{m.request} | {m.request_t} | Payload"
    response = f"{m.response} | {m.response_t} | Payload"
    any_iterable = f"Iterable[{request}] | AsyncIterable[{request}]"
    lines = {
        "server_requests": parameter(" " * 8, "requests", f"AsyncIterator[{m.request}]", ","),
        "server_gen_returns": parenthesized("    ", ") -> ", f"AsyncIterator[{response}]", ":"),
        "client_requests": parameter(" " * 8, "requests", any_iterable, ","),
        "client_stream_returns": parenthesized(
            "    ", ") -> ", f"TypedStream[{request}, {m.response}]", ":"
        ),
    }
    return {key: "\n".join(value) for key, value in lines.items()}


def _signature(service: Service, method: Method) -> str:
    ns = service.namespace

    def short(obj: Object) -> str:
        return obj.short_name if obj.namespace == ns else obj.name

    return f"{method.name}({short(method.request)}): {short(method.response)}"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("smfc", "templates"),
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def encoder_name(view: _ServiceView, table: str) -> str:
    for fn, t, _ in view.encoders:
        if t == table:
            return fn
    raise KeyError(table)


def _value_param(table: str, table_t: str) -> str:
    return "\n".join(parameter("    ", "value", f"{table} | {table_t} | Payload", ","))


def render_service(service: Service, schema: Schema) -> str:
    view = _view(service, schema)
    template = _environment().get_template("service.py.j2")
    return template.render(
        s=view,
        encoder=lambda table: encoder_name(view, table),
        value_param=_value_param,
    )
