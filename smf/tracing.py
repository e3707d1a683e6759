"""W3C trace context. With ``opentelemetry-api`` installed and a real tracer provider
configured, calls get CLIENT/SERVER spans and ``traceparent`` comes from them; without
it nothing is created, and a handler's incoming ``traceparent`` is passed on unchanged
to the calls it makes (see ``smf.client``)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

# Imported by name so the module type-checks the same with or without OpenTelemetry.
_otel_context: Any
_otel_trace: Any
_propagator: Any
try:
    _otel_context = importlib.import_module("opentelemetry.context")
    _otel_trace = importlib.import_module("opentelemetry.trace")
    _propagator = importlib.import_module(
        "opentelemetry.trace.propagation.tracecontext"
    ).TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - exercised only where OpenTelemetry is absent
    _otel_context = _otel_trace = _propagator = None
_NOOP_PROVIDERS = ("ProxyTracerProvider", "NoOpTracerProvider")


_MISSING = object()


def active() -> bool:
    """True when OpenTelemetry is installed and a recording tracer provider is set.

    Called twice per call, so it reads the API's provider global instead of
    ``get_tracer_provider()``, which consults the environment and raises and catches a
    KeyError each time (~1.3 µs). A provider configured only through
    ``OTEL_PYTHON_TRACER_PROVIDER`` is seen once something has called
    ``get_tracer_provider()``.
    """
    if _otel_trace is None:
        return False
    provider = getattr(_otel_trace, "_TRACER_PROVIDER", _MISSING)
    if provider is _MISSING:  # a future API without the global: ask it
        provider = _otel_trace.get_tracer_provider()
    return provider is not None and type(provider).__name__ not in _NOOP_PROVIDERS


@contextlib.contextmanager
def client_span(name: str, carrier: MutableMapping[str, str]) -> Iterator[None]:
    """A CLIENT span around an outgoing call; writes its ``traceparent`` to ``carrier``.
    A ``traceparent`` the caller put in ``carrier`` is the span's parent (else the
    current span is, or none)."""
    assert _otel_trace is not None
    tracer = _otel_trace.get_tracer("smf")
    parent = _propagator.extract(carrier) if "traceparent" in carrier else None
    with tracer.start_as_current_span(name, context=parent, kind=_otel_trace.SpanKind.CLIENT):
        _propagator.inject(carrier)
        yield


def start_client_span(name: str, carrier: MutableMapping[str, str]) -> Any:
    """A CLIENT span for a stream, which outlives any ``with`` block: started now (child
    of a ``traceparent`` in ``carrier``, else of the current span), its ``traceparent``
    written to ``carrier``; the caller ends it with ``end_span``."""
    assert _otel_trace is not None
    tracer = _otel_trace.get_tracer("smf")
    parent = _propagator.extract(carrier) if "traceparent" in carrier else None
    span = tracer.start_span(name, context=parent, kind=_otel_trace.SpanKind.CLIENT)
    _propagator.inject(carrier, context=_otel_trace.set_span_in_context(span))
    return span


def end_span(span: Any, error: BaseException | None) -> None:
    """End a span from ``start_client_span``, marked as failed when ``error`` is set."""
    if error is not None:
        span.record_exception(error)
        span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, str(error)))
    span.end()


@contextlib.contextmanager
def server_span(name: str, metadata: Mapping[str, str]) -> Iterator[None]:
    """A SERVER span, child of the caller's ``traceparent`` when there is one."""
    assert _otel_trace is not None
    parent = _propagator.extract(metadata)
    token = _otel_context.attach(parent)
    try:
        tracer = _otel_trace.get_tracer("smf")
        with tracer.start_as_current_span(name, kind=_otel_trace.SpanKind.SERVER):
            yield
    finally:
        _otel_context.detach(token)
