"""Timing harness: every figure is a ratio against a baseline measured in the same run.

A `Group` holds cases that do the same job (e.g. "one successful call through a
closed breaker") with different libraries. Cases are measured interleaved, in
several rounds, so drift of a noisy machine hits every case alike; we report the
median per-operation time, its spread, and the ratio to the group's baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Budget",
    "Case",
    "CaseResult",
    "Context",
    "Group",
    "GroupResult",
    "Target",
    "run_group",
]

SyncOp = Callable[[], object]
AsyncOp = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Case:
    """One contender.

    ``setup`` builds the thing to time and returns a zero-argument callable
    (a coroutine function when ``is_async``). With ``kind="call"`` the harness
    calls it ``number`` times per round; with ``kind="batch"`` it calls it once
    per round and the callable returns how many operations it performed.
    ``teardown`` (optional) receives what ``setup`` returned.
    """

    name: str
    setup: Callable[[], Any]
    is_async: bool = False
    kind: Literal["call", "batch"] = "call"
    requires: tuple[str, ...] = ()
    teardown: Callable[[Any], None] | None = None
    note: str = ""


@dataclass(frozen=True)
class Target:
    """``case`` must take at most ``max_ratio`` times the time of ``against`` per operation."""

    case: str
    max_ratio: float
    against: str | None = None  # default: the group's baseline


@dataclass(frozen=True)
class Budget:
    """``case`` may cost at most ``max_extra_ns`` more than ``against`` per operation.

    For budgets stated in time rather than as a ratio (e.g. "≤ 3 µs over a bare
    call"): the difference of the two medians of the same run.
    """

    case: str
    max_extra_ns: float
    against: str | None = None  # default: the group's baseline


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    baseline: str
    cases: list[Case]
    targets: list[Target] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    number: int = 20_000
    rounds: int = 7
    quick_number: int = 50
    quick_rounds: int = 1


@dataclass
class CaseResult:
    name: str
    samples_ns: list[float] = field(default_factory=list)
    skipped: str = ""
    note: str = ""

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns) if self.samples_ns else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.samples_ns), max(self.samples_ns)) if self.samples_ns else (0.0, 0.0)


@dataclass
class GroupResult:
    group: Group
    cases: dict[str, CaseResult]

    def ratio(self, case: str, against: str | None = None) -> float:
        base = self.cases.get(against or self.group.baseline)
        this = self.cases.get(case)
        if base is None or this is None or not base.samples_ns or not this.samples_ns:
            return float("nan")
        return this.median_ns / base.median_ns

    def ratio_spread(self, case: str, against: str | None = None) -> tuple[float, float]:
        """Min and max of the per-round ratios.

        Rounds interleave the cases, so round *i* of ``case`` and of ``against``
        ran back to back under the same machine load: their quotient is a fairer
        spread of the ratio than dividing extremes taken from different rounds.
        """
        base = self.cases.get(against or self.group.baseline)
        this = self.cases.get(case)
        if base is None or this is None or not base.samples_ns or not this.samples_ns:
            return (float("nan"), float("nan"))
        ratios = [t / b for t, b in zip(this.samples_ns, base.samples_ns, strict=True)]
        return (min(ratios), max(ratios))

    def target_rows(self) -> list[tuple[Target, float, bool]]:
        rows = []
        for target in self.group.targets:
            ratio = self.ratio(target.case, target.against)
            rows.append((target, ratio, ratio <= target.max_ratio))
        return rows

    def budget_rows(self) -> list[tuple[Budget, float, bool]]:
        rows = []
        for budget in self.group.budgets:
            this = self.cases.get(budget.case)
            base = self.cases.get(budget.against or self.group.baseline)
            extra = float("nan")
            if this is not None and base is not None:
                extra = this.median_ns - base.median_ns
            rows.append((budget, extra, extra <= budget.max_extra_ns))  # NaN: not met
        return rows


class Context:
    """Lazily provides real servers to benchmarks that need them, and cleans up."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self._stack = contextlib.ExitStack()
        self._kafka: Any = None
        self._postgres: str | None = None

    def redis_url(self) -> str:
        return "redis://127.0.0.1:6379/0"

    def postgres_url(self) -> str:
        """SQLAlchemy URL of a fresh PostgreSQL database, dropped at exit."""
        if self._postgres is None:
            from resilience.testing import postgres_database

            dsn = self._stack.enter_context(postgres_database(prefix="rtbench"))
            self._postgres = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        return self._postgres

    def kafka(self) -> Any:
        """A started `resilience.testing.KafkaBroker`, stopped at exit."""
        if self._kafka is None:
            from resilience.testing import KafkaBroker

            self._kafka = self._stack.enter_context(KafkaBroker())
        return self._kafka

    def close(self) -> None:
        self._stack.close()


def _missing(requires: tuple[str, ...]) -> str:
    absent = [m for m in requires if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(absent)}" if absent else ""


def _operations(ops: object) -> int:
    """What a ``kind="batch"`` callable returned: the number of operations it performed."""
    if isinstance(ops, bool) or not isinstance(ops, int):
        raise TypeError(f"a batch case must return its operation count, got {ops!r}")
    return ops


def _time_sync(op: SyncOp, kind: str, number: int) -> float:
    if kind == "batch":
        start = time.perf_counter_ns()
        ops = op()
        elapsed = time.perf_counter_ns() - start
        return elapsed / max(_operations(ops), 1)
    rng = range(number)
    start = time.perf_counter_ns()
    for _ in rng:
        op()
    return (time.perf_counter_ns() - start) / number


async def _time_async(op: AsyncOp, kind: str, number: int) -> float:
    if kind == "batch":
        start = time.perf_counter_ns()
        ops = await op()
        elapsed = time.perf_counter_ns() - start
        return elapsed / max(_operations(ops), 1)
    rng = range(number)
    start = time.perf_counter_ns()
    for _ in rng:
        await op()
    return (time.perf_counter_ns() - start) / number


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_group(group: Group, quick: bool, progress: Callable[[str], None] = print) -> GroupResult:
    number = group.quick_number if quick else group.number
    rounds = group.quick_rounds if quick else group.rounds
    results = {c.name: CaseResult(c.name, note=c.note) for c in group.cases}
    ops: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    try:
        for case in group.cases:
            reason = _missing(case.requires)
            if reason:
                results[case.name].skipped = reason
                continue
            try:
                ops[case.name] = case.setup()
            except Exception as exc:  # a broken peer must not hide the others' numbers
                results[case.name].skipped = f"setup failed: {type(exc).__name__}: {exc}"
        for round_no in range(rounds):
            progress(f"  {group.name}: round {round_no + 1}/{rounds}")
            for case in group.cases:
                if case.name not in ops:
                    continue
                with _gc_paused():
                    if case.is_async:
                        ns = loop.run_until_complete(_time_async(ops[case.name], case.kind, number))
                    else:
                        ns = _time_sync(ops[case.name], case.kind, number)
                results[case.name].samples_ns.append(ns)
    finally:
        for case in group.cases:
            if case.teardown is not None and case.name in ops:
                with contextlib.suppress(Exception):
                    case.teardown(ops[case.name])
        loop.close()
    return GroupResult(group, results)
