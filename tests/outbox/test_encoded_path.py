"""The relay's fast path: stored bytes go to ``publish_encoded`` without a decode/re-encode."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from resilience import PublishError
from resilience.messaging import (
    Codec,
    EncodedMessage,
    InMemoryBroker,
    InMemorySubscription,
    JsonCodec,
    Message,
)
from resilience.outbox import Inbox, Outbox
from resilience.tracing import TracingOptions, configure_tracing

from .conftest import RecordingPublisher, make_relay

DB = tuple[sa.Engine, Outbox, Inbox, sa.Table]


class EncodedPublisher(RecordingPublisher):
    """Records what came through each path; *fail_after* acknowledges a prefix, then fails."""

    def __init__(self, codec: Codec | None = None, fail_after: int | None = None) -> None:
        super().__init__()
        if codec is not None:
            self.codec = codec
        self.fail_after = fail_after
        self.records: list[EncodedMessage] = []
        self.codecs: list[Codec] = []

    def publish_encoded(self, records: Sequence[EncodedMessage], /, *, codec: Codec) -> None:
        self.codecs.append(codec)
        keep = list(records) if self.fail_after is None else list(records)[: self.fail_after]
        self.records.extend(keep)
        if len(keep) < len(records):
            raise PublishError("broker gone", delivered=frozenset(r.id for r in keep))


class XmlCodec(JsonCodec):
    __slots__ = ()

    @property
    def content_type(self) -> str:
        return "application/xml"


@pytest.fixture
def untraced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tracer provider anywhere, as in a process without tracing set up (another test
    of this session may have installed a global one, which OpenTelemetry never unsets)."""
    from opentelemetry import trace

    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
    previous = configure_tracing(TracingOptions())
    yield
    configure_tracing(previous)


def _write(engine: sa.Engine, outbox: Outbox, messages: list[Message]) -> None:
    with engine.begin() as conn:
        outbox.add_many(conn, messages)


@pytest.mark.usefixtures("untraced")
def test_stored_bytes_are_published_as_they_are(db: DB) -> None:
    engine, outbox, _, _ = db
    sent = [
        Message("order.created", {"n": i, "name": "café"}, key=f"k{i % 2}", headers={"a": "b"})
        for i in range(5)
    ]
    _write(engine, outbox, sent)
    publisher = EncodedPublisher()
    assert make_relay(engine, outbox, publisher).run_once().published == 5
    assert publisher.published == []  # the Message path was not used
    assert [r.id for r in publisher.records] == [m.id for m in sent]
    assert [r.value for r in publisher.records] == [outbox.codec.encode(m.payload) for m in sent]
    assert len(publisher.codecs) == 3  # one call per wave: [k0, k1], [k0, k1], [k0]
    assert all(c is outbox.codec for c in publisher.codecs)
    # Everything the consumer sees is intact: payload, key, headers, time.
    assert [r.to_message(outbox.codec) for r in publisher.records] == sent


@pytest.mark.usefixtures("untraced")
def test_a_partial_failure_on_the_fast_path_is_recorded_precisely(db: DB) -> None:
    engine, outbox, _, _ = db
    _write(engine, outbox, [Message("e", {"i": i}, key=f"k{i}") for i in range(6)])
    result = make_relay(engine, outbox, EncodedPublisher(fail_after=3), max_attempts=5).run_once()
    assert (result.published, result.failed) == (3, 3)
    with engine.connect() as conn:
        assert outbox.stats(conn).pending == 3


@pytest.mark.usefixtures("untraced")
def test_a_publisher_with_another_content_type_gets_messages(db: DB) -> None:
    engine, outbox, _, _ = db
    sent = [Message("order.created", {"n": 1}, key="k")]
    _write(engine, outbox, sent)
    publisher = EncodedPublisher(codec=XmlCodec())
    assert make_relay(engine, outbox, publisher).run_once().published == 1
    assert publisher.records == []  # its own codec must encode: the relay transcodes
    assert publisher.published == sent


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = configure_tracing(TracingOptions(tracer_provider=provider))
    yield exporter
    configure_tracing(previous)


def test_with_tracing_on_messages_carry_the_producer_span(
    sqlite_engine: sa.Engine,
    sqlite_tables: tuple[Outbox, Inbox, sa.Table],
    spans: InMemorySpanExporter,
) -> None:
    outbox = sqlite_tables[0]
    _write(sqlite_engine, outbox, [Message("order.created", {"n": 1}, key="k")])
    publisher = EncodedPublisher()
    assert make_relay(sqlite_engine, outbox, publisher).run_once().published == 1
    [producer] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    [sent] = publisher.published
    assert format(producer.context.span_id, "016x") in sent.headers["traceparent"]


def test_producer_and_consumer_spans_name_the_in_memory_system_alike(
    sqlite_engine: sa.Engine,
    sqlite_tables: tuple[Outbox, Inbox, sa.Table],
    spans: InMemorySpanExporter,
) -> None:
    outbox = sqlite_tables[0]
    broker = InMemoryBroker(partitions=1)
    _write(sqlite_engine, outbox, [Message("order.created", {"n": 1}, key="k")])
    relay = make_relay(sqlite_engine, outbox, broker.publisher())
    assert relay.run_once().published == 1
    [producer] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert producer.attributes is not None
    assert producer.attributes["messaging.system"] == InMemorySubscription.system == "in_memory"
