"""Every Python sample in the breaker docs runs (Redis samples are covered by test_breaker_redis)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policies"
PAGES = ["circuit-breaker.md", "migrating-from-pybreaker.md"]
NEEDS_SERVER = ("RedisSharedState(", "CircuitRedisStorage(")


def _samples() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = (DOCS / page).read_text()
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)):
            if not any(marker in block for marker in NEEDS_SERVER):
                found.append((page, i, block))
    return found


SAMPLES = _samples()


def test_the_pages_have_samples() -> None:
    assert len(SAMPLES) >= 6


@pytest.mark.parametrize(("page", "index", "code"), SAMPLES, ids=lambda v: str(v)[:30])
def test_sample_runs(page: str, index: int, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType(f"doc_sample_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    exec(compile(code, f"{page}[{index}]", "exec"), module.__dict__)
