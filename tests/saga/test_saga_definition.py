"""SagaDefinition: validation at construction and the pure decide()."""

from __future__ import annotations

import pytest

from resilience import ConfigurationError
from resilience.saga import SagaDefinition


def _simple(**overrides: object) -> SagaDefinition:
    options: dict[str, object] = {
        "states": {"pending", "done", "failed"},
        "initial": "pending",
        "transitions": {("pending", "ok"): "done", ("pending", "ko"): "failed"},
        "terminal": {"done", "failed"},
    }
    options.update(overrides)
    return SagaDefinition("s", **options)  # type: ignore[arg-type]


def test_decide_accepts_declared_rejects_the_rest_and_ignores_late_timers() -> None:
    d = _simple()
    assert d.decide("pending", "ok").outcome == "accepted"
    assert d.decide("pending", "ok").to_state == "done"
    assert d.decide("pending", "ok").entered
    assert d.decide("done", "ko").outcome == "rejected"
    assert d.decide("done", "saga.timeout", timer=True).outcome == "ignored"
    assert d.decide("pending", "saga.timeout", timer=True).outcome == "rejected"
    assert d.events == {"ok", "ko", "saga.timeout"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"initial": "nowhere"}, "initial"),
        ({"states": set()}, "states"),
        ({"terminal": {"gone"}}, "terminal"),
        ({"terminal": set()}, "terminal"),
        ({"transitions": {("pending", "ok"): "elsewhere"}}, "transitions"),
        ({"transitions": {("limbo", "ok"): "done"}}, "transitions"),
        ({"transitions": {}}, "transitions"),
        ({"transitions": {"pending": "done"}}, "transitions"),
        # "failed" can never be reached from "pending".
        ({"transitions": {("pending", "ok"): "done"}}, "terminal"),
        # a terminal state may only loop on itself
        (
            {
                "transitions": {
                    ("pending", "ok"): "done",
                    ("pending", "ko"): "failed",
                    ("done", "undo"): "pending",
                }
            },
            "transitions",
        ),
        ({"states": "pending"}, "states"),
    ],
)
def test_bad_definitions_fail_at_construction(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _simple(**overrides)
    assert info.value.field == field


def test_a_state_with_no_way_out_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no terminal state can be reached from 'stuck'"):
        SagaDefinition(
            "s",
            states={"pending", "stuck", "done"},
            initial="pending",
            transitions={
                ("pending", "a"): "stuck",
                ("pending", "b"): "done",
                ("stuck", "c"): "stuck",
            },
            terminal={"done"},
        )


def test_unreachable_non_terminal_state_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="orphan"):
        SagaDefinition(
            "s",
            states={"pending", "orphan", "done"},
            initial="pending",
            transitions={("pending", "a"): "done", ("orphan", "a"): "done"},
            terminal={"done"},
        )


def test_order_saga_definition_is_valid(order_saga: object) -> None:
    d = order_saga.ORDER_SAGA  # type: ignore[attr-defined]
    assert d.decide("cancelled", "stock.reserved").outcome == "accepted"
    assert not d.decide("cancelled", "stock.reserved").entered
    assert d.decide("confirmed", "payment.declined").outcome == "rejected"
    assert "SagaDefinition('order'" in repr(d)
