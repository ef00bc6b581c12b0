"""Calibration: the cost of a bare call, so every other figure has a floor to compare with."""

from __future__ import annotations

from ._harness import Case, Context, Group


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


def groups(ctx: Context) -> list[Group]:
    return [
        Group(
            name="baseline.call",
            title="Bare function call (calibration)",
            baseline="bare call",
            cases=[
                Case("bare call", setup=lambda: _work),
                Case("bare await", setup=lambda: _awork, is_async=True),
            ],
            number=200_000,
        )
    ]
