"""Transfers end to end through the in-memory broker and SQLite: consumer, inbox, outbox, relay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from examples.codepix.adapters.messaging import GROUP, TOPICS, CodePixWorker, WorkerOptions
from examples.codepix.adapters.sql import DESTINATION_HEADER, ROUTER, tables
from examples.codepix.application import RegisterPixKey

from resilience import PublishError
from resilience.messaging import (
    DLQ_REASON,
    InMemoryBroker,
    Message,
    Publisher,
    RawMessage,
    RetryBackoff,
    TopicRouter,
)
from resilience.outbox import Backoff, RelayOptions

FAST = WorkerOptions(
    dead_letter_after=3,
    backoff=RetryBackoff(initial=0.01, maximum=0.05, jitter=0.01),
    relay=RelayOptions(
        name="codepix-test",
        listen=False,
        idle_min=0.01,
        idle_max=0.05,
        backoff=Backoff(initial=0.02, maximum=0.1),
        failure_backoff=Backoff(initial=0.02, maximum=0.1),
    ),
    poll_timeout=0.05,
)

# Banks address CodePix's two input topics by message type.
BANK_ROUTER = TopicRouter(
    {
        "transaction.requested": "transactions",
        "transaction.confirmed": "transaction_confirmation",
        "transaction.completed": "transaction_confirmation",
        "transaction.failed": "transaction_confirmation",
        "transaction.exploded": "transactions",  # a type CodePix does not know
    }
)


class Network:
    """CodePix running against an in-memory broker, seen from the banks' side."""

    def __init__(
        self,
        db: Any,
        outgoing: Callable[[Publisher], Publisher] = lambda p: p,
        options: WorkerOptions = FAST,
    ) -> None:
        self.db = db
        self.broker = InMemoryBroker(partitions=2)
        self.bank = self.broker.publisher(router=BANK_ROUTER)
        self.worker = CodePixWorker(
            db.engine,
            db.uow,
            self.broker.subscribe(TOPICS, GROUP),
            outgoing(self.broker.publisher(router=ROUTER)),
            options,
        )
        self.bob_key = str(uuid.uuid4())
        RegisterPixKey(db.uow)("random", self.bob_key, "acc-bob")

    def send(
        self, message_type: str, payload: Any, *, key: str, message_id: str | None = None
    ) -> Message:
        message = Message(
            type=message_type, payload=payload, key=key, id=message_id or str(uuid.uuid4())
        )
        self.bank.publish([message])
        return message

    def request(
        self, tx_id: str, *, amount: Any = 1990, pix_key: str | None = None, **extra: Any
    ) -> Message:
        payload = {
            "id": tx_id,
            "account_id": "acc-ann",
            "amount_cents": amount,
            "pix_key_kind": "random",
            "pix_key": pix_key or self.bob_key,
            "description": "lunch",
            **extra,
        }
        return self.send("transaction.requested", payload, key=tx_id)

    def inbox(self, bank_code: str) -> list[Message]:
        return self.broker.messages(f"bank{bank_code}")

    def status(self, tx_id: str) -> str | None:
        with self.db.engine.connect() as conn:
            return conn.execute(
                sa.select(tables.transactions.c.status).where(tables.transactions.c.id == tx_id)
            ).scalar()

    def count(self, table: sa.Table) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        time.sleep(0.02)


def of_type(messages: list[Message], message_type: str, tx_id: str) -> list[Message]:
    return [m for m in messages if m.type == message_type and m.key == tx_id]


@pytest.fixture
def net(codepix_db: Any) -> Iterator[Network]:
    network = Network(codepix_db)
    network.worker.start()
    yield network
    network.worker.stop()


def test_transfer_goes_pending_confirmed_completed(net: Network) -> None:
    net.request("tx-1")
    requested = eventually(lambda: of_type(net.inbox("002"), "transaction.requested", "tx-1"))
    body = requested[0].payload
    assert body["status"] == "pending"
    assert body["amount_cents"] == 1990
    assert isinstance(body["amount_cents"], int)
    assert body["from"] == {
        "bank_code": "001",
        "account_id": "acc-ann",
        "account_number": "1001",
        "owner_name": "Ann",
    }
    assert body["to"]["account_id"] == "acc-bob"
    assert requested[0].headers[DESTINATION_HEADER] == "bank002"
    assert net.status("tx-1") == "pending"

    net.send("transaction.confirmed", {"id": "tx-1"}, key="tx-1")  # the destination bank
    confirmed = eventually(lambda: of_type(net.inbox("001"), "transaction.confirmed", "tx-1"))
    assert confirmed[0].payload == {"id": "tx-1", "status": "confirmed"}
    assert net.status("tx-1") == "confirmed"

    net.send("transaction.completed", {"id": "tx-1"}, key="tx-1")  # the origin bank
    done = eventually(lambda: of_type(net.inbox("002"), "transaction.completed", "tx-1"))
    assert done[0].payload == {"id": "tx-1", "status": "completed"}
    assert net.status("tx-1") == "completed"
    assert net.worker.consumer.stats.dead_lettered == 0


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"pix_key": "9b2e8f5c-1d3a-4c6b-8e7f-0a1b2c3d4e5f"}, "no random key"),
        ({"amount": 19.9}, "integer number of cents"),
        ({"amount": 0}, "must be positive"),
        ({"amount": -5}, "must be positive"),
    ],
)
def test_refused_transfer_sends_error_back_to_origin(
    net: Network, overrides: dict[str, Any], reason: str
) -> None:
    net.request("tx-bad", **overrides)
    failed = eventually(lambda: of_type(net.inbox("001"), "transaction.failed", "tx-bad"))
    assert failed[0].payload["status"] == "error"
    assert reason in failed[0].payload["reason"]
    assert net.status("tx-bad") is None  # nothing was forwarded or stored
    assert not of_type(net.inbox("002"), "transaction.requested", "tx-bad")


def test_transfer_to_own_account_is_refused_with_reason(net: Network) -> None:
    own = str(uuid.uuid4())
    RegisterPixKey(net.db.uow)("random", own, "acc-ann")
    net.request("tx-self", pix_key=own)
    failed = eventually(lambda: of_type(net.inbox("001"), "transaction.failed", "tx-self"))
    assert "origin account" in failed[0].payload["reason"]


def test_destination_refusal_fails_the_transaction_and_tells_the_origin(net: Network) -> None:
    net.request("tx-refused")
    eventually(lambda: of_type(net.inbox("002"), "transaction.requested", "tx-refused"))
    net.send("transaction.failed", {"id": "tx-refused"}, key="tx-refused")  # no reason: poison
    refusal = {"id": "tx-refused", "reason": "bank 002 has no account acc-bob"}
    net.send("transaction.failed", refusal, key="tx-refused")
    net.send("transaction.failed", refusal, key="tx-refused")  # the bank repeats itself
    failed = eventually(lambda: of_type(net.inbox("001"), "transaction.failed", "tx-refused"))
    assert failed[0].payload == {
        "id": "tx-refused",
        "status": "error",
        "reason": "bank 002 has no account acc-bob",
    }
    assert net.status("tx-refused") == "error"
    eventually(lambda: net.broker.pending(GROUP, "transaction_confirmation") == 0)
    assert len(of_type(net.inbox("001"), "transaction.failed", "tx-refused")) == 1
    [dead] = net.broker.dead_letters("transaction_confirmation")
    assert "payload has no 'reason'" in dict(dead.headers)[DLQ_REASON].decode()


def test_duplicates_are_absorbed(net: Network) -> None:
    """The same message three times, a broker that redelivers, and a bank resend: one transfer."""
    net.broker.duplicate_deliveries(2)
    first = net.request("tx-dup")
    for _ in range(2):
        net.bank.publish([first])  # same message id
    resend_payload = dict(first.payload)
    net.send("transaction.requested", resend_payload, key="tx-dup")  # new id, same transfer
    net.request("tx-after")  # a marker: once it is through, everything before it is too
    eventually(lambda: of_type(net.inbox("002"), "transaction.requested", "tx-after"))
    eventually(lambda: net.broker.pending(GROUP, "transactions") == 0)
    assert len(of_type(net.inbox("002"), "transaction.requested", "tx-dup")) == 1
    with net.db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(sa.func.count()).where(tables.transactions.c.id == "tx-dup")
        ).scalar_one()
    assert rows == 1


def test_malformed_messages_are_dead_lettered_and_the_service_keeps_running(net: Network) -> None:
    net.broker.publish_raw("transactions", RawMessage(key=b"x", value=b"{not json", headers=[]))
    net.send("transaction.requested", {"id": "tx-m"}, key="tx-m")  # missing fields
    net.send("transaction.requested", ["not", "an", "object"], key="tx-m2")
    net.send(
        "transaction.requested", {**_request("tx-ghost"), "account_id": "ghost"}, key="tx-ghost"
    )
    net.send("transaction.confirmed", {"id": "no-such-tx"}, key="no-such-tx")
    net.send("transaction.exploded", {"id": "tx-x"}, key="tx-x")
    net.request("tx-ok")  # a good transfer after the garbage
    eventually(lambda: of_type(net.inbox("002"), "transaction.requested", "tx-ok"))

    def reasons() -> list[str]:
        return [
            dict(r.headers)[DLQ_REASON].decode()
            for topic in TOPICS
            for r in net.broker.dead_letters(topic)
        ]

    eventually(lambda: len(reasons()) >= 6)
    text = "\n".join(reasons())
    assert "undecodable" in text
    assert "payload has no 'account_id'" in text
    assert "payload must be a JSON object" in text
    assert "origin account 'ghost' is unknown" in text
    assert "no transaction 'no-such-tx'" in text
    assert "does not handle messages of type 'transaction.exploded'" in text
    assert net.worker.consumer.stats.dead_lettered == 6
    assert net.status("tx-ok") == "pending"


def test_completing_before_confirming_is_dead_lettered_not_applied(net: Network) -> None:
    net.request("tx-order")
    eventually(lambda: net.status("tx-order") == "pending")
    net.send("transaction.completed", {"id": "tx-order"}, key="tx-order")
    eventually(lambda: net.broker.dead_letters("transaction_confirmation"))
    assert net.status("tx-order") == "pending"


class FlakyPublisher:
    """Fails the first *failures* publish calls, like a broker that is down for a while."""

    def __init__(self, inner: Publisher, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def publish(self, messages: Sequence[Message], /) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise PublishError("bank topic unavailable")
        self.inner.publish(messages)

    def close(self) -> None:
        self.inner.close()


def test_broker_outage_on_the_way_out_is_retried_not_lost(codepix_db: Any) -> None:
    flaky: list[FlakyPublisher] = []
    net = Network(codepix_db, lambda p: flaky.append(FlakyPublisher(p, 4)) or flaky[0])
    with net.worker:
        net.request("tx-retry")
        eventually(lambda: of_type(net.inbox("002"), "transaction.requested", "tx-retry"))
        eventually(lambda: net.count(tables.outbox) == 0)  # delivered rows are deleted
    assert flaky[0].calls >= 5  # four failures, then the success
    assert len(of_type(net.inbox("002"), "transaction.requested", "tx-retry")) == 1


def _request(tx_id: str) -> dict[str, Any]:
    return {
        "id": tx_id,
        "account_id": "acc-ann",
        "amount_cents": 100,
        "pix_key_kind": "random",
        "pix_key": str(uuid.uuid4()),
    }


@pytest.fixture
def tracer() -> Any:
    """A tracer on the global SDK provider (installed once per process, as OpenTelemetry requires)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from resilience.tracing import _otel

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    _otel.reset_detection()
    return trace.get_tracer("tests.codepix")


def test_trace_context_follows_the_transfer_to_the_destination_bank(
    net: Network, tracer: Any
) -> None:
    from resilience.tracing import capture_context

    with tracer.start_as_current_span("bank001.send-pix") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        message = Message(
            type="transaction.requested",
            key="tx-traced",
            headers=capture_context(),
            payload={
                "id": "tx-traced",
                "account_id": "acc-ann",
                "amount_cents": 500,
                "pix_key_kind": "random",
                "pix_key": net.bob_key,
            },
        )
    assert message.headers["traceparent"].split("-")[1] == trace_id
    net.bank.publish([message])
    forwarded = eventually(lambda: of_type(net.inbox("002"), "transaction.requested", "tx-traced"))
    assert forwarded[0].headers["traceparent"].split("-")[1] == trace_id


@pytest.mark.parametrize(
    ("field", "value"),
    [("dead_letter_after", 0), ("poll_timeout", 0), ("backoff", 1.0), ("relay", None)],
)
def test_worker_options_are_validated(field: str, value: Any) -> None:
    from resilience import ConfigurationError

    with pytest.raises(ConfigurationError, match=field):
        WorkerOptions(**{field: value})


def test_nothing_is_lost_while_codepix_is_down_or_cut_off_from_the_banks(codepix_db: Any) -> None:
    """Banks send while CodePix is down; then CodePix runs but cannot reach the banks' topics;
    then it restarts healthy. Every transfer arrives at the destination exactly once."""
    import dataclasses

    patient = dataclasses.replace(FAST, relay=dataclasses.replace(FAST.relay, max_attempts=10_000))
    cut_off = Network(codepix_db, lambda p: FlakyPublisher(p, failures=10**9), patient)
    ids = [f"tx-down-{i}" for i in range(10)]
    for tx_id in ids:  # CodePix is down: the messages wait in the broker
        cut_off.request(tx_id)
    assert cut_off.broker.pending(GROUP, "transactions") == 10

    with cut_off.worker:  # up, but every publish to the banks fails
        eventually(lambda: cut_off.count(tables.transactions) == 10)
        eventually(lambda: cut_off.broker.pending(GROUP, "transactions") == 0)
        time.sleep(0.3)  # let the relay fail a few rounds
    assert cut_off.count(tables.outbox) == 10  # committed with the state, waiting
    assert cut_off.inbox("002") == []

    restarted = CodePixWorker(  # a new process on the same database and broker
        codepix_db.engine,
        codepix_db.uow,
        cut_off.broker.subscribe(TOPICS, GROUP),
        cut_off.broker.publisher(router=ROUTER),
        patient,
    )
    with restarted:
        eventually(lambda: len(cut_off.inbox("002")) >= 10)
        eventually(lambda: cut_off.count(tables.outbox) == 0)
    forwarded = sorted(m.key or "" for m in cut_off.inbox("002"))
    assert forwarded == sorted(ids)  # each exactly once
