"""PRODUCER and CONSUMER spans for messages, after the OpenTelemetry messaging conventions.

A message carries the trace context of the code that created it (captured by
``outbox.add`` into ``Message.headers``). The relay that publishes it later and
the consumer that processes it both start their spans from *that* context, not
from whatever happens to be current in their own process, so one order is one
trace from the HTTP request to the last handler.

Span names and attributes follow the messaging semantic conventions (1.27+):
``send {destination}`` (kind PRODUCER, ``messaging.operation.type=send``) and
``process {destination}`` (kind CONSUMER, ``messaging.operation.type=process``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from resilience._errors import ConfigurationError

from ._otel import OtelApi, api, tracer
from ._propagation import capture_context, extract

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from resilience.messaging import Message

__all__ = [
    "SpanRelation",
    "TracingOptions",
    "configure_tracing",
    "consumer_span",
    "current_options",
    "producer_span",
    "record_failure",
]

SpanRelation = Literal["parent", "link"]
"""How a messaging span relates to the context in the message headers.

``"parent"``: the span is a child of the upstream span, in the same trace.
``"link"``: the span starts a new trace and carries a span *link* to the upstream span.
"""

_RELATIONS: Final = frozenset(get_args(SpanRelation))


class _Attr:
    """The semantic-convention attribute names we set (messaging semconv 1.27+)."""

    SYSTEM: Final = "messaging.system"
    DESTINATION_NAME: Final = "messaging.destination.name"
    OPERATION_TYPE: Final = "messaging.operation.type"
    OPERATION_NAME: Final = "messaging.operation.name"
    MESSAGE_ID: Final = "messaging.message.id"
    CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
    KAFKA_MESSAGE_KEY: Final = "messaging.kafka.message.key"
    ERROR_TYPE: Final = "error.type"
    MESSAGE_TYPE: Final = "resilience.message.type"


@dataclass(frozen=True, slots=True)
class TracingOptions:
    """Process-wide defaults for the messaging spans; every call may override them.

    Attributes:
        producer_relation: how the relay's PRODUCER span relates to the context
            captured when the message was written. ``"parent"`` (default) keeps
            request and publish in one trace; ``"link"`` starts a new trace, for
            outboxes where events may wait hours and one giant trace is unwanted.
        consumer_relation: the same choice for CONSUMER spans. ``"link"`` is the
            convention's advice for batch consumers and fan-out to many services.
        tracer_provider: the provider to take tracers from; the global one if None.
    """

    producer_relation: SpanRelation = "parent"
    consumer_relation: SpanRelation = "parent"
    tracer_provider: TracerProvider | None = None

    def __post_init__(self) -> None:
        for name in ("producer_relation", "consumer_relation"):
            if getattr(self, name) not in _RELATIONS:
                raise ConfigurationError(name, f"must be one of {sorted(_RELATIONS)}")


_options_lock = threading.Lock()
_options = TracingOptions()


def configure_tracing(options: TracingOptions) -> TracingOptions:
    """Replace the process-wide defaults; returns the previous ones (to restore in tests)."""
    global _options
    if not isinstance(options, TracingOptions):
        raise ConfigurationError("options", "must be a TracingOptions")
    with _options_lock:
        previous, _options = _options, options
    return previous


def current_options() -> TracingOptions:
    """The process-wide defaults in force."""
    return _options


class _NoHeaders:
    """What `producer_span` returns without OpenTelemetry: yields a fresh ``{}``."""

    __slots__ = ()

    def __enter__(self) -> dict[str, str]:
        return {}

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN: Final = nullcontext(None)


def _tracer(otel: OtelApi, provider: TracerProvider | None) -> Tracer:
    return tracer(otel, provider if provider is not None else _options.tracer_provider)


def _relation(value: SpanRelation | None, default: SpanRelation, field: str) -> SpanRelation:
    if value is None:
        return default
    if value not in _RELATIONS:
        raise ConfigurationError(field, f"must be one of {sorted(_RELATIONS)}")
    return value


def record_failure(span: Span, exc: BaseException) -> None:
    """Mark *span* failed by *exc*: an exception event, ``error.type``, ERROR status."""
    from opentelemetry.trace import Status, StatusCode

    if not span.is_recording():
        return
    span.record_exception(exc)
    span.set_attribute(_Attr.ERROR_TYPE, _qualified_name(type(exc)))
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _attributes(
    message: Message,
    system: str,
    destination: str,
    operation: str,
    extra: Mapping[str, AttributeValue] | None,
) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        _Attr.SYSTEM: system,
        _Attr.DESTINATION_NAME: destination,
        _Attr.OPERATION_TYPE: operation,
        _Attr.OPERATION_NAME: operation,
        _Attr.MESSAGE_ID: message.id,
        _Attr.MESSAGE_TYPE: message.type,
    }
    if system == "kafka" and message.key is not None:
        attrs[_Attr.KAFKA_MESSAGE_KEY] = message.key
    if extra:
        attrs.update(extra)
    return attrs


def _start_context(
    otel: OtelApi, headers: Mapping[str, str], relation: SpanRelation
) -> tuple[Context, list[Any]]:
    """The context to start a span in, and its links, from a message's headers."""
    upstream = extract(headers)
    assert upstream is not None
    if relation == "parent":
        return upstream, []
    remote = otel.trace.get_current_span(upstream).get_span_context()
    # Keep the upstream baggage but drop its span: the new span is a root.
    rooted = otel.trace.set_span_in_context(otel.trace.INVALID_SPAN, upstream)
    links = [otel.trace.Link(remote)] if remote.is_valid else []
    return rooted, links


@contextmanager
def _span(
    otel: OtelApi,
    *,
    name: str,
    kind: Any,
    start: Context,
    links: list[Any],
    attributes: dict[str, AttributeValue],
    tracer_provider: TracerProvider | None,
) -> Iterator[tuple[Span, Context]]:
    span = _tracer(otel, tracer_provider).start_span(
        name, context=start, kind=kind, attributes=attributes, links=links
    )
    active = otel.trace.set_span_in_context(span, start)
    token = otel.context.attach(active)
    try:
        yield span, active
    except Exception as exc:
        record_failure(span, exc)
        raise
    finally:
        otel.context.detach(token)
        span.end()


def producer_span(
    message: Message,
    *,
    system: str,
    destination: str,
    relation: SpanRelation | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AbstractContextManager[dict[str, str]]:
    """A PRODUCER span around publishing *message*; yields the headers to put on the wire.

    The span starts from the context in ``message.headers`` (captured by
    ``outbox.add``), never from the relay's own context, so the publish shows up
    in the trace of the request that created the event. The yielded dict holds
    the producer span's own context (``traceparent``, ``tracestate``,
    ``baggage``): publish ``message.with_headers(**wire_headers)`` so the
    consumer continues from the send, not from the request. A publish that
    raises marks the span failed and re-raises. Without OpenTelemetry it yields
    ``{}`` and costs nothing.

    Args:
        message: the message about to be published.
        system: ``messaging.system``: ``"kafka"``, ``"redis"``, ``"in_memory"``...
        destination: the topic or stream name.
        relation: ``"parent"`` or ``"link"``; `TracingOptions.producer_relation` if None.
        attributes: extra span attributes (partition, conversation id...).
        tracer_provider: overrides `TracingOptions.tracer_provider`.
    """
    otel = api()
    mode = _relation(relation, _options.producer_relation, "relation")
    if otel is None:
        return _NoHeaders()
    return _producer(
        otel,
        message,
        system=system,
        destination=destination,
        mode=mode,
        attributes=attributes,
        tracer_provider=tracer_provider,
    )


@contextmanager
def _producer(
    otel: OtelApi,
    message: Message,
    *,
    system: str,
    destination: str,
    mode: SpanRelation,
    attributes: Mapping[str, AttributeValue] | None,
    tracer_provider: TracerProvider | None,
) -> Iterator[dict[str, str]]:
    start, links = _start_context(otel, message.headers, mode)
    with _span(
        otel,
        name=f"send {destination}",
        kind=otel.trace.SpanKind.PRODUCER,
        start=start,
        links=links,
        attributes=_attributes(message, system, destination, "send", attributes),
        tracer_provider=tracer_provider,
    ) as (_, active):
        yield capture_context(context=active)


def consumer_span(
    message: Message,
    *,
    system: str,
    destination: str,
    consumer_group: str | None = None,
    relation: SpanRelation | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AbstractContextManager[Span | None]:
    """A CONSUMER ("process") span around handling *message*, made current for the handler.

    The span continues the trace carried in ``message.headers`` (as a child,
    or linked when *relation* is ``"link"``); spans the handler starts and any
    ``outbox.add`` it makes belong to the same trace. The message's baggage is
    current too. An exception escaping the block is recorded on the span, sets
    ERROR status, and propagates unchanged. Yields the span (None without
    OpenTelemetry).

    Args:
        message: the message being processed.
        system: ``messaging.system``: ``"kafka"``, ``"redis"``, ``"in_memory"``...
        destination: the topic or stream the message came from.
        consumer_group: ``messaging.consumer.group.name``; omitted when None or empty.
        relation: ``"parent"`` or ``"link"``; `TracingOptions.consumer_relation` if None.
        attributes: extra span attributes (partition, offset, delivery attempt...).
        tracer_provider: overrides `TracingOptions.tracer_provider`.
    """
    otel = api()
    mode = _relation(relation, _options.consumer_relation, "relation")
    if otel is None:
        return _NO_SPAN
    return _consumer(
        otel,
        message,
        system=system,
        destination=destination,
        consumer_group=consumer_group,
        mode=mode,
        attributes=attributes,
        tracer_provider=tracer_provider,
    )


@contextmanager
def _consumer(
    otel: OtelApi,
    message: Message,
    *,
    system: str,
    destination: str,
    consumer_group: str | None,
    mode: SpanRelation,
    attributes: Mapping[str, AttributeValue] | None,
    tracer_provider: TracerProvider | None,
) -> Iterator[Span | None]:
    start, links = _start_context(otel, message.headers, mode)
    attrs = _attributes(message, system, destination, "process", attributes)
    if consumer_group:
        attrs[_Attr.CONSUMER_GROUP_NAME] = consumer_group
    with _span(
        otel,
        name=f"process {destination}",
        kind=otel.trace.SpanKind.CONSUMER,
        start=start,
        links=links,
        attributes=attrs,
        tracer_provider=tracer_provider,
    ) as (span, _):
        yield span
