"""The docs page's Python sample runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from examples.orders_invoices.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "examples" / "orders-invoices.md"


def test_python_samples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_sample"})


def test_documented_commands_are_real_ones() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    commands = [line.split() for block in blocks for line in block.splitlines()]
    assert [c[:4] for c in commands] == [
        ["python", "-m", "examples.orders_invoices", "demo"],
        ["python", "-m", "examples.orders_invoices", "demo"],
        ["python", "-m", "examples.orders_invoices", "up"],
        ["python", "-m", "examples.orders_invoices", "serve"],
    ]
    parser = build_parser()
    for command in commands:
        parser.parse_args(command[3:])  # exits (SystemExit) on an unknown option
