"""The samples in docs/tracing run, and the outputs the page shows are what they print."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the samples start real HTTP servers

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tracing"
PAGE = DOCS / "index.md"
SAMPLES = sorted(p.name for p in DOCS.glob("*.py"))


@functools.cache
def _run(name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-W", "error", str(DOCS / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _normalise(text: str) -> list[str]:
    text = re.sub(r"\+?\d+\.\d ms", "", text)
    text = re.sub(r"trace [0-9a-f]{32}", "trace <id>", text)
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def _shown_after(sample: str) -> str:
    """The first ```text block after the snippet include of *sample* in the page."""
    page = PAGE.read_text()
    start = page.index(f'--8<-- "docs/tracing/{sample}"')
    block = re.search(r"```text\n(.*?)```", page[start:], re.DOTALL)
    assert block is not None
    return block.group(1)


def test_every_sample_is_included_in_the_page() -> None:
    page = PAGE.read_text()
    included = re.findall(r'--8<-- "docs/tracing/([^"]+)"', page)
    assert sorted(included) == SAMPLES


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_runs(name: str) -> None:
    _run(name)


@pytest.mark.parametrize("name", ["one_order.py", "http_service.py", "grpc_service.py"])
def test_the_page_shows_what_the_sample_prints(name: str) -> None:
    printed = _normalise(_run(name))
    printed = printed[printed.index("trace <id>") :]  # the trace view, after any other output
    assert printed == _normalise(_shown_after(name))
