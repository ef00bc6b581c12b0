"""Every complete Python sample in the outbox and inbox docs runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "messaging"
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _samples() -> list[tuple[str, int, str]]:
    out = []
    for page in ("outbox.md", "inbox.md"):
        for i, code in enumerate(FENCE.findall((DOCS / page).read_text())):
            if code.startswith(("import ", "from ")):  # fragments continue a sample; skip them
                out.append((page, i, code))
    return out


@pytest.mark.parametrize(("page", "index", "code"), _samples(), ids=lambda v: str(v)[:20])
def test_sample_runs(
    page: str, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # samples create SQLite files in the working directory
    exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": "__docs__"})


def test_there_are_samples_on_both_pages() -> None:
    pages = {page for page, _, _ in _samples()}
    assert pages == {"outbox.md", "inbox.md"}
