"""The docs page's Python sample runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "examples" / "orders-invoices.md"


def test_python_samples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_sample"})


def test_documented_command_is_the_real_one() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    assert blocks == ["python -m examples.orders_invoices demo\n"]
