"""Every code sample of docs/idempotency runs and its assertions hold."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[2] / "docs" / "idempotency"


@pytest.mark.parametrize("sample", sorted(p.name for p in DOCS.glob("*.py")))
def test_doc_sample_runs(sample: str) -> None:
    runpy.run_path(str(DOCS / sample), run_name="__main__")
