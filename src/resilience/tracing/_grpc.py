"""Trace context in gRPC metadata.

gRPC metadata is a list of ``(key, value)`` pairs with lower-case keys;
binary entries end in ``-bin`` and carry bytes. These helpers add the W3C
context to outgoing metadata and read it from incoming metadata, without
importing grpcio, so they work with any gRPC stack (grpcio, grpclib).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._propagation import capture_context, extract

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["extract_grpc_metadata", "inject_grpc_metadata"]


def inject_grpc_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None = None,
) -> list[tuple[str, str | bytes]]:
    """Outgoing call metadata with the current trace context added.

    Existing entries are kept in order; any stale trace entries they hold
    (``traceparent``, ``tracestate``, ``baggage``) are replaced by the current
    ones. ``stub.Charge(request, metadata=inject_grpc_metadata([("x-tenant", "acme")]))``.
    """
    trace_headers = capture_context()
    kept = [
        (key.lower(), value) for key, value in (metadata or ()) if key.lower() not in trace_headers
    ]
    kept.extend((key.lower(), value) for key, value in trace_headers.items())
    return kept


def extract_grpc_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> Context | None:
    """The trace context carried by incoming gRPC metadata (None without OpenTelemetry).

    Pass ``context.invocation_metadata()`` from a grpcio servicer, then run the
    handler under it: ``otel_context.attach(extract_grpc_metadata(md))``, or
    use `use_context` with the same pairs as a dict. Binary (``-bin``) entries
    are ignored; repeated keys are combined with commas.
    """
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        name = key.lower()
        if name.endswith("-bin") or not isinstance(value, str):
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return extract(headers)
