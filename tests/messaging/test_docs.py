"""Every runnable sample of docs/messaging/transports.md runs and its assertions hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "messaging" / "transports.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
RUNNABLE = [b for b in BLOCKS if not b.startswith("# requires")]


def test_the_page_has_runnable_samples() -> None:
    assert len(RUNNABLE) >= 5
    assert len(BLOCKS) > len(RUNNABLE)  # and the server ones are marked, not dropped


@pytest.mark.parametrize("source", RUNNABLE, ids=[f"sample-{i}" for i in range(len(RUNNABLE))])
def test_sample_runs(source: str) -> None:
    exec(compile(source, str(DOC), "exec"), {"__name__": "__doc_sample__"})
