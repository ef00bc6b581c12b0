"""The scripted chaos scenario of the demo, with its invariants."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from examples.orders_invoices.embedded import EmbeddedSystem

from examples.orders_invoices import demo

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "examples" / "orders-invoices.md"


def _report_labels(text: str) -> list[str]:
    """The first column of the demo's report: what each line counts."""
    block = text.split("=== report ===\n", 1)[1]
    block = re.split(r"\n\s*\n|\n```", block, maxsplit=1)[0]
    return [re.split(r"\s{2,}", line.strip(), maxsplit=1)[0] for line in block.splitlines()]


def test_chaos_scenario_keeps_every_invariant(system: EmbeddedSystem) -> None:
    lines: list[str] = []
    broken = demo.run(system, lines.append)
    assert broken == [], "\n".join(lines)
    orders = system.orders.list_orders()
    reasons = sorted(o["reason"] for o in orders if o["status"] == "cancelled")
    assert reasons == ["out_of_stock", "payment_failed"]
    confirmed = [o for o in orders if o["status"] == "confirmed"]
    assert len(confirmed) == len(orders) - 2
    # The crash after charging really happened, twice, and Stripe was asked again...
    assert system.payments.crashes == 2
    charge_requests = [key for op, key in system.stripe.requests if op == "charges"]
    assert (
        len(charge_requests) >= len(orders) - 1 + 2
    )  # every order but the out-of-stock one, +2 after the crashes
    # ...yet each order holds exactly one charge, for its own amount.
    by_order = {c.order_id: c.amount for c in system.stripe.active_charges()}
    assert by_order == {o["id"]: o["total_cents"] for o in confirmed}
    # Correios misbehaved and the pipeline absorbed it.
    assert ("closed", "open") in system.logistics.transitions
    assert system.logistics.transitions[-1] == ("half_open", "closed")
    assert {"cache", "correios"} <= set(system.logistics.sources)
    assert any("partial=True" in line and "invoice" in line for line in lines)


def test_demo_command_traces_one_order_and_exits_zero() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.orders_invoices",
            "demo",  # prints one order's trace by default: the SDK is a test dependency
            "--crash-after-charge",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "=== report ===" in result.stdout
    # The sample report on the docs page has the lines this demo prints, in order.
    assert _report_labels(DOC.read_text()) == _report_labels(result.stdout)
    assert "all invariants hold" in result.stdout
    assert "3 crashes after charging" in result.stdout
    # One order, one trace: from the gateway's request to the email consumer.
    tree = result.stdout.split("the trace of one order:")[1].split("[  ")[0]
    assert len(re.findall(r"^trace [0-9a-f]{32}$", tree, re.MULTILINE)) == 1
    for hop in (
        "POST /orders",
        "send order.created",
        "process stock",
        "POST /v1/charges",
        "send order.confirmed",
        "GET /quotes",
        "GET /preco",
        "process invoice",
    ):
        assert hop in tree, hop
