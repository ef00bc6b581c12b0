"""The docs' commands are the real ones: protoc regenerates the committed code byte for byte."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "examples" / "codepix.md"
GENERATED = ROOT / "examples" / "codepix" / "adapters" / "grpc_api" / "_generated"


def documented_protoc_command() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    command = next(b for b in blocks if "grpc_tools.protoc" in b)
    return shlex.split(command.replace("\\\n", " "))


def test_documented_protoc_command_reproduces_the_committed_code(tmp_path: Path) -> None:
    argv = documented_protoc_command()
    assert argv[:3] == ["python", "-m", "grpc_tools.protoc"]
    # same command, output redirected into a scratch directory
    argv = [sys.executable, *argv[1:]]
    argv = [a.replace("=.", f"={tmp_path}") if a.endswith("_out=.") else a for a in argv]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=60)
    produced = tmp_path / GENERATED.relative_to(ROOT)
    for name in ("codepix_pb2.py", "codepix_pb2.pyi", "codepix_pb2_grpc.py"):
        assert (produced / name).read_bytes() == (GENERATED / name).read_bytes(), name


def test_module_docstring_shows_the_same_command() -> None:
    from examples.codepix.adapters import grpc_api

    documented = " ".join(documented_protoc_command())
    in_code = " ".join(shlex.split((grpc_api.__doc__ or "").split("::", 1)[1].replace("\\\n", " ")))
    assert documented in in_code


def test_documented_operator_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``python -m examples.codepix`` operator line of the docs, in order, on a fresh SQLite."""
    import io
    import json

    from examples.codepix.adapters.cli import main

    monkeypatch.chdir(tmp_path)  # the default database is ./codepix.sqlite3
    block = next(
        b for b in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S) if "key register" in b
    )
    lines = [
        shlex.split(line)
        for line in block.splitlines()
        if line.startswith("python -m examples.codepix") and not line.rstrip().endswith("\\")
    ]
    assert len(lines) == 6
    outputs = []
    for argv in lines:
        out = io.StringIO()
        assert main(argv[3:], out) == 0, (argv, out.getvalue())
        outputs.append(json.loads(out.getvalue()))
    assert outputs[-1]["account"]["owner_name"] == "Bob"
    assert outputs[-1]["account"]["bank"]["code"] == "002"
