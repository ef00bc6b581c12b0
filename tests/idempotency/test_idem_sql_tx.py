"""SqlStore inside the caller's transaction, and fingerprint properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.idempotency import canonical_json, current_idempotency, fingerprint, idempotent

pytestmark = pytest.mark.integration  # concurrent transactions on real databases


@pytest.fixture(params=["postgres", "sqlite", "mariadb"])
def sql_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_completion_commits_and_rolls_back_with_the_business_transaction(
    sql_url: str, make_sql_store: Any
) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    store = make_sql_store(sql_url)
    orders = sa.Table(
        f"orders_{store.table.name}",
        sa.MetaData(),
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("amount", sa.Integer),
    )
    orders.create(store.engine)
    calls: list[str] = []
    fail_after_complete = [True]

    @idempotent(store, key="order_id")
    def place(order_id: str, amount: int) -> dict[str, Any]:
        calls.append(order_id)
        result = {"order": order_id, "amount": amount}
        with Session(store.engine) as session, session.begin():
            session.execute(orders.insert().values(id=order_id, amount=amount))
            current_idempotency().complete(result, via=store.in_session(session))
            if fail_after_complete[0]:
                fail_after_complete[0] = False
                raise RuntimeError("crash before commit")  # rolls back order AND completion
        return result

    with pytest.raises(RuntimeError):
        place("o1", 10)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar() == 0
    # The completion was rolled back too, so the key was released and a retry runs:
    assert place("o1", 10) == {"order": "o1", "amount": 10}
    assert place("o1", 10) == {"order": "o1", "amount": 10}
    assert calls == ["o1", "o1"]
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(orders.c.amount)).scalars().all() == [10]
    orders.drop(store.engine)


def test_checkpoint_in_session_is_atomic_with_the_step(sql_url: str, make_sql_store: Any) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    store = make_sql_store(sql_url)
    effects = sa.Table(
        f"fx_{store.table.name}", sa.MetaData(), sa.Column("step", sa.String(20), primary_key=True)
    )
    effects.create(store.engine)
    crash = [True]

    @idempotent(store, key="k")
    def two_steps(k: str) -> str:
        ctx = current_idempotency()
        if "step1" not in ctx:
            with Session(store.engine) as session, session.begin():
                session.execute(effects.insert().values(step="step1"))
                ctx.checkpoint("step1", {"ok": True}, via=store.in_session(session))
        if crash[0]:
            crash[0] = False
            raise ConnectionError("between steps")
        with Session(store.engine) as session, session.begin():
            session.execute(effects.insert().values(step="step2"))
        return "done"

    with pytest.raises(ConnectionError):
        two_steps("a")
    assert two_steps("a") == "done"
    with store.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(effects.c.step)).scalars()) == ["step1", "step2"]
    effects.drop(store.engine)


# --------------------------------------------------------------------------- fingerprint properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6), st.randoms())
def test_fingerprint_is_stable_under_key_order(args: dict[str, Any], rnd: Any) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    assert fingerprint(args) == fingerprint(shuffled(args))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=6), st.data())
def test_fingerprint_is_sensitive_to_every_field(args: dict[str, Any], data: Any) -> None:
    field = data.draw(st.sampled_from(sorted(args)))
    new_value = data.draw(json_values)
    changed = {**args, field: new_value}
    if canonical_json(changed) != canonical_json(args):  # a different JSON value...
        assert fingerprint(changed) != fingerprint(args)  # ...always changes the fingerprint
    extra = {**args, field + "\u0000extra": args[field]}
    assert fingerprint(extra) != fingerprint(args)  # so does an added field
    smaller = {k: v for k, v in args.items() if k != field}
    assert fingerprint(smaller) != fingerprint(args)  # and a removed one


def test_fingerprint_distinguishes_json_types() -> None:
    assert fingerprint({"a": 1}) != fingerprint({"a": True})
    assert fingerprint({"a": 1}) != fingerprint({"a": "1"})
    assert fingerprint({"a": None}) != fingerprint({})
