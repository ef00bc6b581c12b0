"""The invariant check is not a rubber stamp: real breakage is reported, and the demo exits 1."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from examples.orders_invoices.embedded import EmbeddedSystem

from examples.orders_invoices import demo


def test_a_charge_without_a_confirmed_order_is_reported(system: EmbeddedSystem) -> None:
    assert system.invariants() == []
    with httpx.Client(base_url=system.stripe.url) as stripe:
        stripe.post(
            "/v1/charges",
            data={"amount": "100", "source": "tok_visa", "metadata[order_id]": "ghost"},
        ).raise_for_status()
    assert system.invariants() == ["Stripe holds 1 charges for 0 confirmed orders"]


def test_lost_stock_and_a_gap_are_reported(system: EmbeddedSystem) -> None:
    stock = system.stock
    with stock.engine.begin() as conn:
        conn.execute(stock.stock.update().where(stock.stock.c.sku == "mug").values(available=39))
    invoices = system.invoices
    with invoices.engine.begin() as conn:
        conn.execute(
            invoices.invoices.insert().values(
                number=2,
                order_id="o-2",
                customer="x@y.z",
                goods_cents=1,
                shipping_cents=1,
                shipping_source="cache",
                issued_at=0.0,
            )
        )
    broken = system.invariants()
    assert any(line.startswith("stock of mug: 39 available") for line in broken)
    assert any("without gaps: [2]" in line for line in broken)
    assert any(line.startswith("1 invoices for 0 confirmed orders") for line in broken)
    with invoices.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(invoices.invoices)).scalar() == 1


def test_demo_exits_one_when_an_invariant_breaks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def scenario_that_loses_an_email(
        system: EmbeddedSystem, say: object = print, *, crash_after_charge: int = 2
    ) -> list[str]:
        system.smtp.messages.append({"to": "x", "subject": "s", "message_id": "<stray@x>"})
        return system.invariants()

    monkeypatch.setattr(demo, "run", scenario_that_loses_an_email)
    assert demo.main(trace=False) == 1  # no traced order: the stray email is the only one
    out = capsys.readouterr().out
    assert "INVARIANTS BROKEN" in out
    assert "1 emails for 0 invoices" in out
