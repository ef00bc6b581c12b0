"""``python -m examples.orders_invoices demo``: the scripted scenario with chaos, and its report.

Phases (each printed as it runs):

1. warm-up: orders go through while everything is healthy (Correios prices get cached);
2. Correios slow: quotes time out, retries draw on the budget, cached prices answer;
3. Correios down: the logistics breaker opens, quotes come from cache or flat rate;
4. payments crash mid-charge: Stripe charged, our database "unreachable",
   the message is redelivered, Stripe's idempotency returns the same charge;
5. invoices stopped: orders keep being confirmed, the BFF answers with a
   partial response, and the backlog is invoiced when invoices comes back;
6. duplicate client retries on every order (same ``Idempotency-Key``), a
   declined card, an out-of-stock order;
7. recovery: Correios healthy again, the breaker closes; wait until settled.

Then the report, and exit status 1 if any invariant is broken.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from examples.orders_invoices import _tracing
from examples.orders_invoices.domain import DECLINED_CARD
from examples.orders_invoices.embedded import EmbeddedSystem
from resilience.tracing import format_trace

ZIPS = ("01310-100", "20040-020", "30130-010", "40020-000", "90010-150")


def post_order(http: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """POST /orders, retrying while the gateway answers 409.

    409 means the first attempt with this key is still running at the gateway
    (the middleware stores its response before sending it, so a retry after
    the answer is replayed, never refused). A real client
    waits for ``Retry-After`` (1 s at least); the demo polls every 50 ms to
    stay short.
    """
    for _ in range(100):
        response = http.post("/orders", json=body, headers=headers)
        if response.status_code != 409:
            return response
        time.sleep(0.05)
    return response


@dataclass
class Client:
    """A shop client that retries every POST with the same Idempotency-Key, as a real one would."""

    http: httpx.Client
    say: Callable[[str], None]
    created: list[str] = field(default_factory=list)
    replays: int = 0
    n: int = 0

    def order(
        self,
        *,
        card: str = "tok_visa",
        items: list[dict[str, Any]] | None = None,
        duplicate: bool = True,
    ) -> str:
        self.n += 1
        body = {
            "customer": f"customer{self.n}@shop.example",
            "zip": ZIPS[self.n % len(ZIPS)],
            "card": card,
            "items": items or [{"sku": "book", "qty": 1 + self.n % 2}, {"sku": "mug", "qty": 1}],
        }
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        first = post_order(self.http, body, headers)
        if first.status_code != 201:
            raise RuntimeError(f"POST /orders answered {first.status_code}: {first.text}")
        order_id = str(first.json()["id"])
        if duplicate:  # the client lost the response and retries
            again = post_order(self.http, body, headers)
            if again.json()["id"] != order_id:
                raise RuntimeError("a retried POST /orders created a second order")
            self.replays += again.headers.get("idempotent-replayed") == "true"
        self.created.append(order_id)
        return order_id

    def batch(self, n: int) -> None:
        for _ in range(n):
            self.order()


def run(
    system: EmbeddedSystem, say: Callable[[str], None] = print, *, crash_after_charge: int = 2
) -> list[str]:
    """Drive the scenario on a started system; return the broken invariants."""
    t0 = time.monotonic()
    with httpx.Client(base_url=system.gateway.url, timeout=10) as http:
        return _scenario(system, Client(http, say), t0, say, crash_after_charge)


def _scenario(
    system: EmbeddedSystem,
    client: Client,
    t0: float,
    say: Callable[[str], None],
    crash_after_charge: int,
) -> list[str]:
    def phase(text: str) -> None:
        say(f"[{time.monotonic() - t0:5.1f}s] {text}")

    phase("1/7 warm-up: 6 orders, everything healthy")
    client.batch(6)
    system.wait_until(system.settled, 15)

    phase("2/7 Correios slow (1 s per answer, our timeout is 0.3 s)")
    system.correios.mode = "slow"
    client.batch(4)
    system.wait_until(system.settled, 15)

    phase("3/7 Correios down (503)")
    system.correios.mode = "down"
    client.batch(4)
    system.wait_until(system.settled, 15)

    phase(f"4/7 payments database crashes right after Stripe charges ({crash_after_charge}x)")
    system.payments.crash_after_charge = crash_after_charge
    client.batch(2)
    system.wait_until(lambda: system.payments.crash_after_charge == 0, 10)
    system.wait_until(system.settled, 15)

    phase("5/7 invoices service stopped; orders keep coming")
    system.invoices.stop()
    client.batch(4)
    system.wait_until(
        lambda: system.orders.counts().get("confirmed", 0) >= len(client.created) - 1, 10
    )
    bff = client.http.get(f"/bff/orders/{client.created[-1]}").json()
    phase(f"    BFF while invoices is down: partial={bff['partial']} missing={bff['missing']}")
    system.invoices.start()
    phase("    invoices back: draining its backlog")

    phase("6/7 a declined card, an out-of-stock order, more duplicate retries")
    client.order(card=DECLINED_CARD)
    client.order(items=[{"sku": "shirt", "qty": 50}])
    client.batch(2)

    phase("7/7 Correios healthy again; waiting until everything settles")
    system.correios.mode = "ok"
    settled = system.wait_until(system.settled, 30)
    closed_by = time.monotonic() + 15  # trial quotes after the open period close the breaker
    while system.logistics.breaker.state.value != "closed" and time.monotonic() < closed_by:
        system.logistics.quote("01310-100", 1)
        time.sleep(0.2)
    phase("settled" if settled else "NOT settled after 30 s")

    broken = system.invariants()
    report(system, client, say)
    if not settled:
        broken.append("the system did not settle within 30 s")
    return broken


def report(system: EmbeddedSystem, client: Client, say: Callable[[str], None]) -> None:
    counts = system.orders.counts()
    confirmed = counts.get("confirmed", 0)
    stripe = system.stripe
    charge_requests = sum(op == "charges" for op, _ in stripe.requests)
    numbers = system.invoices.numbers()
    logistics = system.logistics
    say("")
    say("=== report ===")
    say(
        f"orders created           {sum(counts.values())} ({client.replays} duplicate POSTs "
        "replayed, none created an order)"
    )
    say(f"orders by final status   {dict(sorted(counts.items()))}")
    say(
        f"Stripe                   {len(stripe.charges)} charges, {stripe.refunds()} refunded, "
        f"{len(stripe.active_charges())} kept, for {confirmed} confirmed orders "
        f"({charge_requests} charge requests, {system.payments.crashes} crashes after charging)"
    )
    gapless = numbers == list(range(1, len(numbers) + 1))
    say(
        f"invoices issued          {len(numbers)} numbered {numbers[:1]}..{numbers[-1:]} "
        f"({'gapless' if gapless else 'GAPS'})"
    )
    say(f"emails received (SMTP)   {len(system.smtp.messages)}")
    say(
        f"shipping quotes          {dict(sorted(logistics.sources.items()))}; "
        f"fallbacks by cause {dict(sorted(logistics.fallbacks.items()))}"
    )
    say(
        f"Correios breaker         {' ; '.join(f'{a}->{b}' for a, b in logistics.transitions) or 'no change'}"
    )
    say(
        f"gateway breakers         {' ; '.join(f'{n}: {a}->{b}' for n, a, b in system.gateway.transitions) or 'no change'}"
    )
    say(
        f"Correios retries         {logistics.retries} spent; budget (ratio 0.2, 1/s reserve) "
        f"has {logistics.budget.available():.1f} left; {logistics.fallbacks.get('RetryBudgetExhaustedError', 0)} "
        "calls refused by the budget"
    )


def trace_one_order(system: EmbeddedSystem, spans: Callable[[], Sequence[Any]]) -> str:
    """Place one order under a known trace id, wait for it to settle, render its trace."""
    trace_id = uuid.uuid4().hex
    headers = {
        "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    body = {
        "customer": "traced@shop.example",
        "zip": "01310-100",
        "items": [{"sku": "poster", "qty": 1}],
    }
    with httpx.Client(base_url=system.gateway.url, timeout=10) as http:
        http.post("/orders", json=body, headers=headers).raise_for_status()
    system.wait_until(system.settled, 15)
    time.sleep(0.3)  # the last consumer span ends just after its ack
    mine = [span for span in spans() if f"{span.context.trace_id:032x}" == trace_id]
    return format_trace(mine, attributes=["messaging.destination.name"], timings=False)


def main(*, trace: bool = True, exporter: str = "none", crash_after_charge: int = 2) -> int:
    """Run the demo; 0 when every invariant holds, 1 otherwise.

    With *trace* (and OpenTelemetry's SDK installed), spans are kept in memory
    and the trace of one order (gateway → orders → relay → broker → stock → ...
    → email) is printed before the chaos starts. *exporter* also sends every
    span to the console or over OTLP (see ``_tracing``).
    """
    started = time.monotonic()
    trace = trace and _tracing.sdk_installed()
    shutdown, spans = _tracing.install(exporter, "orders-invoices-embedded", keep_in_memory=trace)
    print("starting 7 services, fake Stripe, fake Correios and an SMTP sink in this process ...")
    with EmbeddedSystem() as system:
        if trace:
            print("the trace of one order:")
            print(trace_one_order(system, spans))
            print("")
        else:
            print("(no trace view: install opentelemetry-sdk to see one order's trace)")
        broken = run(system, crash_after_charge=crash_after_charge)
    shutdown()
    print("")
    if broken:
        print("INVARIANTS BROKEN:")
        for line in broken:
            print(f"  - {line}")
        return 1
    print(
        f"all invariants hold ({time.monotonic() - started:.1f} s): every order confirmed or "
        "cancelled; Stripe charges == confirmed orders; one invoice and one email per confirmed "
        "order, gapless numbers; stock conserved"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
