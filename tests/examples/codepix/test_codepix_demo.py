"""``python -m examples.codepix demo`` and the bank's process entrypoint, as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from examples.codepix.adapters.cli import main

pytestmark = pytest.mark.integration  # spawns processes and loopback servers

ROOT = Path(__file__).resolve().parents[3]


def run(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.codepix", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_runs_through_outages_and_the_money_adds_up(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run("demo", "--transfers", "8", "--workdir", str(tmp_path))
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert elapsed < 60, out
    for step in ("CodePix DOWN", "restarting CodePix", "CTD DOWN", "restarting CTD"):
        assert step in out, out
    assert "registering a key now fails fast" in out, out
    total = re.search(r"total before (\d+), after (\d+) cents: OK", out)
    assert total is not None, out
    assert total[1] == total[2]
    histories = [line for line in out.splitlines() if re.search(r" \d+c: ", line)]
    assert len(histories) == 9, out  # 2 + 2 + 2 + 2 transfers, and the refused one
    for line in histories[:-1]:
        sides = line.split(": ", 1)[1].split(" | ")
        assert sides == ["pending > confirmed > completed"] * 2 + ["completed"], out
    assert "pending > error (no email key 'nobody@nowhere.example') | - | -" in histories[-1]
    assert (tmp_path / "bank002.sqlite3").exists()  # --workdir keeps the databases


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("bank", "--code", "1"), "bank code must be exactly three digits"),
        (("bank", "--code", "abc"), "bank code must be exactly three digits"),
        (("bank",), "bank code must be exactly three digits"),
        (("bank", "--code", "009"), "give it a name"),
        (("bank", "--code", "001", "--colour", "red"), "colour must look like"),
    ],
)
def test_bank_process_refuses_bad_settings(
    argv: tuple[str, ...], message: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    monkeypatch.delenv("BANK_CODE", raising=False)
    assert main(list(argv)) == 2
    assert message in caplog.text
