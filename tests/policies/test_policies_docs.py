"""Every Python sample on the retry/timeout/bulkhead/rate-limiter/fallback/pipeline pages runs.

The samples of a page run in order, in one namespace (later samples may use
earlier definitions), and their own ``assert`` statements must hold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policies"
PAGES = [
    "index.md",
    "retry.md",
    "timeout.md",
    "bulkhead.md",
    "fallback.md",
    "pipeline.md",
    "migrating-from-tenacity.md",
]


def _samples(page: str) -> str:
    """The page's python blocks, each kept at its own line numbers (for readable tracebacks)."""
    text = (DOCS / page).read_text()
    lines = [""] * text.count("\n")
    found = False
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        first = text.count("\n", 0, match.start(1))
        for offset, line in enumerate(match.group(1).splitlines()):
            lines[first + offset] = line
        found = True
    assert found, f"{page} has no python samples"
    return "\n".join(lines)


def _run(page: str) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.replace('-', '_')[:-3]}"}
    exec(compile(_samples(page), str(DOCS / page), "exec"), namespace)


@pytest.mark.parametrize("page", PAGES)
def test_page_samples_run(page: str) -> None:
    _run(page)


def test_rate_limiter_page_samples_run(redis_url: str) -> None:
    # This page's fleet-wide sample talks to a real Redis (127.0.0.1:6379).
    _run("rate-limiter.md")
