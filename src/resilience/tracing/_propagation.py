"""W3C trace context in and out of string carriers (headers, outbox rows, metadata).

The propagators are OpenTelemetry's *global* text-map propagators, so whatever
the service configured (W3C ``traceparent``/``tracestate`` and ``baggage`` by
default, B3 or Jaeger through ``OTEL_PROPAGATORS``) is what rides along.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._otel import api

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["capture_context", "extract", "inject", "use_context"]

_log = logging.getLogger("resilience.tracing")


def capture_context(*, context: Context | None = None) -> dict[str, str]:
    """The current trace context as headers, to store next to work that runs later.

    ``outbox.add`` stamps each message with it, so the trace survives the time an
    event waits in the outbox table. Returns ``{}`` when OpenTelemetry is not
    installed or nothing is active; never raises (telemetry must not fail a write).

    Args:
        context: the context to capture; the current one by default.
    """
    otel = api()
    if otel is None:
        return {}
    carrier: dict[str, str] = {}
    try:
        otel.propagate.inject(carrier, context=context)
    except Exception:  # a broken propagator must never fail the business write
        _log.debug("trace context injection failed", exc_info=True)
        return {}
    return carrier


def inject(carrier: MutableMapping[str, str], *, context: Context | None = None) -> None:
    """Write the current (or given) trace context into *carrier* in place.

    A no-op without OpenTelemetry. Works on any mutable string mapping: a dict,
    ``httpx.Headers``, a Kafka header dict before encoding.
    """
    otel = api()
    if otel is None:
        return
    try:
        otel.propagate.inject(carrier, context=context)
    except Exception:
        _log.debug("trace context injection failed", exc_info=True)


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The trace context carried by *carrier*, on a clean base context.

    Header names are matched case-insensitively (HTTP/2 and gRPC lower-case
    them, some brokers do not). The result never inherits the caller's ambient
    span or baggage, so a relay or consumer does not mix its own trace into the
    message's. Returns None when OpenTelemetry is not installed.
    """
    otel = api()
    if otel is None:
        return None
    lowered = {str(k).lower(): v for k, v in carrier.items()}
    try:
        ctx: Context = otel.propagate.extract(lowered, context=otel.context.Context())
    except Exception:
        _log.debug("trace context extraction failed", exc_info=True)
        return otel.context.Context()  # type: ignore[no-any-return]
    return ctx


@contextmanager
def use_context(headers: Mapping[str, str]) -> Iterator[Context | None]:
    """Make the trace context in *headers* current for the block.

    Spans started inside are children of the remote span, and
    `capture_context` inside returns it, which is how a handler that runs
    outside any instrumented framework continues its caller's trace.
    """
    otel = api()
    if otel is None:
        yield None
        return
    ctx = extract(headers)
    token = otel.context.attach(ctx)
    try:
        yield ctx
    finally:
        otel.context.detach(token)
