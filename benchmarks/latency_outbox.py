"""End-to-end latency of the outbox at low load: commit → consumer handler.

    python -m benchmarks.latency_outbox [--events 200] [--interval 0.02]

Writes one event per *interval* seconds in its own transaction and measures
the time from just before COMMIT until a Kafka consumer's handler sees it,
once with LISTEN/NOTIFY and once polling only (idle waits doubling from 50 ms
to 2 s). Prints p50 / p99 / max per mode.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any

from ._harness import Context


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(ctx: Context, *, listen: bool, events: int, interval: float) -> list[float]:
    import sqlalchemy as sa
    from confluent_kafka import Consumer

    from resilience.messaging import KafkaPublisher, Message, RawMessage, decode_message
    from resilience.outbox import Outbox, Relay

    broker = ctx.kafka()
    topic = broker.create_topic(f"latency-{uuid.uuid4().hex[:8]}", partitions=1)
    engine = sa.create_engine(ctx.postgres_url())
    outbox = Outbox(sa.MetaData(), name=f"latency_{uuid.uuid4().hex[:8]}")
    outbox.create_tables(engine)
    publisher = KafkaPublisher(
        {"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0},
        router=lambda message: topic,
    )
    relay = Relay(engine, outbox, publisher, listen=listen, name="latency")
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = threading.Event()
    ready = threading.Event()

    def consume() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap_servers,
                "group.id": f"latency-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 200,
                "fetch.wait.max.ms": 5,
            }
        )
        consumer.subscribe([topic], on_assign=lambda c, p: ready.set())
        while not done.is_set():
            record = consumer.poll(0.05)
            if record is None or record.error():
                continue
            message = decode_message(
                RawMessage(record.key(), record.value(), record.headers() or [])
            )
            arrived = time.perf_counter()
            if message.id in sent_at:
                latencies.append(arrived - sent_at[message.id])
                if len(latencies) == events:
                    done.set()
        consumer.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    ready.wait(15)
    relay.start()
    time.sleep(1.0)  # let the relay go idle
    try:
        for i in range(events):
            message = Message("order.created", {"i": i}, key=f"order-{i}")
            with engine.connect() as conn:
                trans = conn.begin()
                outbox.add(conn, message)
                sent_at[message.id] = time.perf_counter()
                trans.commit()
            time.sleep(interval)
        done.wait(30)
    finally:
        relay.stop()
        done.set()
        thread.join(5)
        publisher.close()
        engine.dispose()
    return latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between commits")
    args = parser.parse_args(argv)
    ctx = Context(quick=False)
    try:
        for listen in (True, False):
            values = measure(ctx, listen=listen, events=args.events, interval=args.interval)
            mode = "LISTEN/NOTIFY" if listen else "polling (50 ms → 2 s idle backoff)"
            if not values:
                print(f"{mode}: no events received")
                continue
            ms: Any = [v * 1000 for v in values]
            print(
                f"{mode:38s} n={len(ms):4d}  p50={statistics.median(ms):7.1f} ms  "
                f"p99={_percentile(ms, 99):7.1f} ms  max={max(ms):7.1f} ms"
            )
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
