"""OpenTelemetry tracing across Kafka hops (W3C ``traceparent`` in record headers).

Every handled record gets a CONSUMER span whose parent is the context in the
record's ``traceparent`` header; every record published while handling one
carries the current span's ``traceparent``. So an inbox record and its
verdict share a trace, and a lifecycle chain (DatasetReady -> ModelTrained
-> ... -> ModelPromoted) is one trace, next to its shared correlation id.

Export: OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``..._TRACES_ENDPOINT``) is set, otherwise JSON lines in
``<state>/traces/<service>.jsonl`` (one finished span per line).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from spamops_runtime.rotation import rotate_if_larger

_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False
_lock = threading.Lock()


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines in a file (the default without an OTLP endpoint)."""

    def __init__(self, path: Path, *, max_bytes: int = 0, backups: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes  # rotate above this size (0 = never)
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append one line per span."""
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
                        "span_id": f"{ctx.span_id:016x}" if ctx else None,
                        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
                        "kind": span.kind.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": dict(span.attributes or {}),
                        "service": span.resource.attributes.get("service.name"),
                    },
                    default=str,
                )
            )
        with self._lock:
            rotate_if_larger(self.path, self.max_bytes, self.backups, copytruncate=False)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def configure_tracing(
    service: str, state_dir: Path, *, max_bytes: int = 0, backups: int = 0
) -> None:
    """Install the process's tracer provider once (OTLP if configured, else JSON lines).

    The JSON-lines file is rotated above ``max_bytes`` (0 = never), ``backups`` kept.
    """
    global _configured
    with _lock:
        if _configured:
            return
        provider = TracerProvider(resource=Resource.create({"service.name": f"spamops-{service}"}))
        exporter: SpanExporter
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = JsonLinesExporter(
                state_dir / "traces" / f"{service}.jsonl", max_bytes=max_bytes, backups=backups
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _configured = True


_TRACER: tuple[object, trace.Tracer] | None = None


def tracer() -> trace.Tracer:
    """The spamops tracer (a no-op one until ``configure_tracing`` ran).

    Looked up once per tracer provider: the SDK's ``TracerProvider.get_tracer``
    runs ``warnings.filterwarnings`` on every call, which cost ~40 % of a
    service's CPU when done per record (py-spy).
    """
    global _TRACER
    provider = trace.get_tracer_provider()
    if _TRACER is None or _TRACER[0] is not provider:
        _TRACER = (provider, provider.get_tracer("spamops"))
    return _TRACER[1]


@contextmanager
def consumer_span(
    name: str, headers: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A CONSUMER span continuing the trace of a record's ``traceparent`` header."""
    parent = _PROPAGATOR.extract(carrier=dict(headers))
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(
            name, kind=SpanKind.CONSUMER, attributes=dict(attributes or {})
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current span's ``traceparent`` into outgoing headers (when there is one)."""
    if trace.get_current_span().get_span_context().is_valid:
        _PROPAGATOR.inject(carrier=headers)


def traceparent_trace_id(headers: Mapping[str, str]) -> str | None:
    """Trace id of a record's W3C ``traceparent`` header, without starting a span."""
    value = headers.get("traceparent", "")
    parts = value.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return None


def current_trace_id() -> str | None:
    """Hex trace id of the current span, for logs."""
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
