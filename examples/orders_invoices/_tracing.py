"""Switch OpenTelemetry on for a process of the example: ``--trace-exporter``.

The toolkit only uses the OpenTelemetry API; a process records spans once an
SDK ``TracerProvider`` is installed. ``console`` prints every finished span as
JSON on stdout, ``otlp`` sends them over OTLP/HTTP to
``OTEL_EXPORTER_OTLP_ENDPOINT`` (default ``http://localhost:4318``), ``none``
records nothing. The default comes from ``OTEL_TRACES_EXPORTER``, the SDK's
own variable, so ``OTEL_TRACES_EXPORTER=otlp python -m examples.orders_invoices up``
works as the OpenTelemetry docs say it should.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

EXPORTERS = ("none", "console", "otlp")
DEFAULT_EXPORTER = "none"


class TracingUnavailableError(RuntimeError):
    """The chosen exporter needs a package that is not installed."""


def exporter_from_environment() -> str:
    """``OTEL_TRACES_EXPORTER`` when it names an exporter we offer, else ``none``."""
    value = os.environ.get("OTEL_TRACES_EXPORTER", DEFAULT_EXPORTER).strip().lower()
    return value if value in EXPORTERS else DEFAULT_EXPORTER


def sdk_installed() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def install(
    exporter: str, service_name: str, *, keep_in_memory: bool = False
) -> tuple[Callable[[], None], Callable[[], Sequence[Any]]]:
    """Install a global tracer provider exporting to *exporter*, or join the SDK
    provider already installed (then its resource, not *service_name*, names the spans).

    Returns ``(shutdown, finished_spans)``: call ``shutdown`` before the process
    exits so batched spans are flushed; ``finished_spans`` lists the spans
    recorded so far when *keep_in_memory* (the demo's trace view), else nothing.
    With ``none`` and no in-memory copy asked for, nothing is installed.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown trace exporter {exporter!r}; choose one of {EXPORTERS}")
    if exporter == "none" and not keep_in_memory:
        return (lambda: None), tuple
    if not sdk_installed():
        raise TracingUnavailableError(
            f"--trace-exporter {exporter} needs the OpenTelemetry SDK: "
            "pip install opentelemetry-sdk"
        )
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    processors: list[Any] = []
    if exporter == "console":
        processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        processors.append(BatchSpanProcessor(_otlp_exporter()))
    memory = InMemorySpanExporter()
    if keep_in_memory:
        processors.append(SimpleSpanProcessor(memory))
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        # OpenTelemetry lets a process set its global provider once; a later set is
        # ignored. Join the one in place (a host app's, or an earlier run's in the
        # same process) so that these spans are still exported and kept.
        for processor in processors:
            current.add_span_processor(processor)

        def detach() -> None:
            for processor in processors:
                processor.shutdown()

        return detach, memory.get_finished_spans
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider.shutdown, memory.get_finished_spans


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TracingUnavailableError(
            "--trace-exporter otlp needs the OTLP exporter: "
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from exc
    return OTLPSpanExporter()  # endpoint and headers from OTEL_EXPORTER_OTLP_* variables
