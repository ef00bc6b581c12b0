"""The I/O-free rules: publish waves keep per-key order; options are validated."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import ConfigurationError
from resilience.outbox import Backoff, RelayOptions, plan_waves


@dataclass(frozen=True)
class Row:
    position: int
    key: str | None
    prev: int | None


def test_first_rows_of_each_key_go_together_and_followers_wait_a_wave() -> None:
    rows = [
        Row(1, "a", None),
        Row(2, "b", None),
        Row(3, "a", 1),
        Row(4, None, None),
        Row(5, "a", 3),
    ]
    waves = plan_waves(rows)
    assert [[r.position for r in w] for w in waves] == [[1, 2, 4], [3], [5]]


def test_a_row_whose_predecessor_is_not_in_the_batch_is_left_out() -> None:
    # Row 7's predecessor (6) is held by another relay or backing off: 7 and 9 must wait.
    rows = [Row(7, "a", 6), Row(8, "b", None), Row(9, "a", 7)]
    waves = plan_waves(rows)
    assert [[r.position for r in w] for w in waves] == [[8]]


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), min_size=1, max_size=60),
)
def test_waves_never_put_a_row_before_its_predecessor(spec: list[tuple[str, bool]]) -> None:
    # Build a table of rows; some are claimed by "us", the rest by someone else.
    last: dict[str, int] = {}
    rows: list[Row] = []
    claimed: list[Row] = []
    for position, (key, ours) in enumerate(spec, start=1):
        row = Row(position, key, last.get(key))
        last[key] = position
        rows.append(row)
        if ours:
            claimed.append(row)
    waves = plan_waves(claimed)
    wave_of = {r.position: i for i, w in enumerate(waves) for r in w}
    ours = {r.position for r in claimed}
    for row in claimed:
        if row.position not in wave_of:
            continue
        # Every earlier row of the key is ours and published in an earlier wave.
        for earlier in rows:
            if earlier.key == row.key and earlier.position < row.position:
                assert earlier.position in ours
                assert wave_of[earlier.position] < wave_of[row.position]
    # And nothing publishable was left out: the first claimed row of a key whose
    # earlier rows are all ours is always planned.
    for row in claimed:
        chain_ours = all(
            r.position in ours for r in rows if r.key == row.key and r.position < row.position
        )
        assert (row.position in wave_of) == chain_ours


def test_backoff_grows_exponentially_caps_and_jitters_downwards() -> None:
    b = Backoff(initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.5)
    assert [b.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5, 100)] == [1, 2, 4, 8, 10, 10]
    assert b.delay(3, rand=lambda: 1.0) == 2.0
    assert 2.0 <= b.delay(3) <= 4.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": -1}, "initial"),
        ({"initial": 5, "maximum": 1}, "maximum"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 2}, "jitter"),
    ],
)
def test_bad_backoff_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Backoff(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"on_sent": "archive"}, "on_sent"),
        ({"claim_mode": "magic"}, "claim_mode"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"idle_min": 3, "idle_max": 1}, "idle_min"),
        ({"name": ""}, "name"),
        ({"backoff": 1.0}, "backoff"),
    ],
)
def test_bad_relay_options_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RelayOptions(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
