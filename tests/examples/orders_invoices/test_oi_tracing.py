"""``--trace-exporter console | otlp | none``: spans leave the example's processes for real."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from examples.orders_invoices.__main__ import build_parser
from examples.orders_invoices.supervisor import settings_from

ROOT = Path(__file__).resolve().parents[3]

# One process of the example, reduced to what --trace-exporter changes: install the
# exporter as `serve` does, record one span, shut down as `serve` does on SIGTERM.
CHILD = textwrap.dedent(
    """
    import sys
    from opentelemetry import trace
    from examples.orders_invoices import _tracing

    shutdown, _ = _tracing.install(sys.argv[1], "orders-invoices-orders")
    with trace.get_tracer("test").start_as_current_span("order.created publish"):
        pass
    shutdown()
    """
)


def _child(exporter: str, *, source: str = CHILD, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source, exporter],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_the_default_comes_from_otel_traces_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert build_parser().parse_args(["up"]).trace_exporter == "console"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")  # not one we offer: off, not a crash
    assert build_parser().parse_args(["demo"]).trace_exporter == "none"


def test_up_hands_the_exporter_to_every_service_it_starts() -> None:
    settings = settings_from(build_parser().parse_args(["up", "--trace-exporter", "otlp"]))
    assert "--trace-exporter=otlp" in settings.argv()
    child = settings_from(build_parser().parse_args(["serve", "orders", *settings.argv()]))
    assert child == settings


def test_an_unknown_exporter_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["demo", "--trace-exporter", "zipkin"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'zipkin'" in capsys.readouterr().err


def test_console_prints_each_span_as_json() -> None:
    out = _child("console").stdout
    span = json.loads(out[out.index("{") :])
    assert span["name"] == "order.created publish"
    assert span["resource"]["attributes"]["service.name"] == "orders-invoices-orders"


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []  # each fixture gives its subclass a list

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """An OTLP/HTTP endpoint that keeps what it receives."""
    received: ClassVar[list[tuple[str, bytes]]] = []  # each fixture gives its subclass a list
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_otlp_posts_the_spans_to_the_collector(
    collector: tuple[str, list[tuple[str, bytes]]],
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    endpoint, received = collector
    _child("otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    assert [path for path, _ in received] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(received[0][1])
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "orders-invoices-orders"
    names = [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert names == ["order.created publish"]


# A host process that set its own global provider first, then runs the demo twice.
HOSTED = textwrap.dedent(
    """
    import sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from examples.orders_invoices import _tracing

    host = TracerProvider()
    trace.set_tracer_provider(host)
    for run in ("first", "second"):
        shutdown, finished = _tracing.install(sys.argv[1], "orders-invoices-demo", keep_in_memory=True)
        with trace.get_tracer("test").start_as_current_span(f"{run} order"):
            pass
        print(run, [span.name for span in finished()])
        shutdown()
    print("host kept", trace.get_tracer_provider() is host)
    """
)


def test_a_provider_already_in_place_is_joined_not_replaced() -> None:
    out = _child("none", source=HOSTED).stdout.splitlines()
    # Each run sees its own spans (before, a second provider was ignored: no spans).
    assert out == ["first ['first order']", "second ['second order']", "host kept True"]
