"""The saga docs' samples run, and the snippets the page includes exist."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sagas"


def test_order_saga_sample_runs(order_saga: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    order_saga.main(n=60, seed=3)
    out = capsys.readouterr().out
    assert "ChaosReport(" in out
    assert "rejected=[]" in out


def test_included_snippets_exist() -> None:
    page = (DOCS / "index.md").read_text()
    sample = (DOCS / "order_saga.py").read_text()
    sections = re.findall(r'--8<-- "docs/sagas/order_saga.py:(\w+)"', page)
    assert sections, "the page includes the sample"
    for name in sections:
        assert f"# --8<-- [start:{name}]" in sample
        assert f"# --8<-- [end:{name}]" in sample
