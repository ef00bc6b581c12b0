"""Every Python sample in the docs runs, or is compiled for a stated reason: none is untested silently.

The convention (see docs/contributing.md), read from the first line of a
```python fence, or from a comment line of its own above the first import of a
``docs/**/*.py`` sample file:

- no marker: the sample runs as written. The fences of one page run in order in
  one interpreter, so a sample may use what an earlier sample on its page defined.
- ``# requires: redis`` (``postgres``, ``kafka``; several separated by commas):
  the sample needs a server. It runs as well, against the test fixtures'
  servers, which it finds in ``REDIS_URL``, ``DATABASE_URL`` (a SQLAlchemy URL)
  and ``KAFKA_BOOTSTRAP``.
- ``# fragment: <why>``: a piece of a larger program (it uses names it does not
  define, or serves forever); it must compile.
- a fence holding only ``--8<-- "docs/x.py"`` (or ``"docs/x.py:section"``) shows a
  sample file: the file runs as ``__main__`` and the section must exist.

Each page and each sample file runs in a fresh interpreter with ``-W error``, in
an empty working directory, so samples cannot leak global state (OpenTelemetry
providers, tracing options) into each other or into this test session.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SERVERS = {"redis": "REDIS_URL", "postgres": "DATABASE_URL", "kafka": "KAFKA_BOOTSTRAP"}
PYTHON = {"python", "py", "python3"}
TIMEOUT = 120

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>\w+))?"$')
REQUIRES = re.compile(r"^# requires: *(?P<servers>\w+(?: *, *\w+)*) *$")
FRAGMENT = re.compile(r"^# fragment: *(?P<why>\S.*)$")
MARKER_LIKE = re.compile(r"^# *(requires|fragment)\b")


@dataclass(frozen=True)
class Sample:
    source: str  # docs-relative path of the page or file
    line: int  # 1-based line of the code's first line in that file
    code: str  # dedented
    kind: str  # "run", "requires", "fragment", "include", "invalid"
    detail: str = ""  # servers, reason, included path[:section] or what is wrong

    @property
    def where(self) -> str:
        return f"docs/{self.source}:{self.line}"

    @property
    def servers(self) -> tuple[str, ...]:
        if self.kind != "requires":
            return ()
        return tuple(s.strip() for s in self.detail.split(","))


def _language(info: str) -> str:
    """``python``, ``py title="x"``, ``{.python}`` and ``{ .python .copy }`` all name python."""
    info = info.strip()
    if info.startswith("{"):
        classes = re.findall(r"\.([\w-]+)", info)
        return classes[0] if classes else ""
    return info.split()[0] if info else ""


def _classify(source: str, line: int, code: str) -> Sample:
    lines = [ln for ln in code.strip("\n").splitlines() if ln.strip()]
    first = lines[0].strip() if lines else ""
    includes = [INCLUDE.match(ln.strip()) for ln in lines]
    if lines and all(includes):
        if len(lines) > 1:
            return Sample(source, line, code, "invalid", "show one sample file per fence")
        match = includes[0]
        assert match is not None
        detail = match["path"] + (f":{match['section']}" if match["section"] else "")
        return Sample(source, line, code, "include", detail)
    if any(includes):
        return Sample(source, line, code, "invalid", "an include must have its fence to itself")
    if match := REQUIRES.match(first):
        unknown = {s.strip() for s in match["servers"].split(",")} - SERVERS.keys()
        if unknown:
            return Sample(source, line, code, "invalid", f"unknown server(s) {sorted(unknown)}")
        return Sample(source, line, code, "requires", match["servers"].replace(" ", ""))
    if match := FRAGMENT.match(first):
        return Sample(source, line, code, "fragment", match["why"])
    if MARKER_LIKE.match(first):
        return Sample(
            source, line, code, "invalid", f"malformed marker {first!r}: see this module's doc"
        )
    return Sample(source, line, code, "run")


def page_samples(page: Path) -> list[Sample]:
    text = page.read_text()
    source = page.relative_to(DOCS).as_posix()
    found = []
    for match in FENCE.finditer(text):
        language = _language(match["info"])
        if not language.startswith("py"):
            continue
        line = text.count("\n", 0, match.start("body")) + 1
        code = textwrap.dedent(match["body"])
        if language not in PYTHON:
            found.append(Sample(source, line, code, "invalid", f"unsupported language {language}"))
            continue
        found.append(_classify(source, line, code))
    return found


def _hooks() -> set[Path]:
    """mkdocs hooks live in docs/ too, but they are build code, not samples."""
    config = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^hooks:\n((?:[ \t]+- .+\n)+)", config, re.MULTILINE)
    if block is None:
        return set()
    return {ROOT / item.strip() for item in re.findall(r"- (.+)", block.group(1))}


def file_sample(path: Path) -> Sample:
    text = path.read_text()
    source = path.relative_to(DOCS).as_posix()
    header = re.split(r"^(?:import|from) ", text, maxsplit=1, flags=re.MULTILINE)[0]
    for number, raw in enumerate(header.splitlines(), 1):
        if MARKER_LIKE.match(raw):
            sample = _classify(source, number, raw)
            return Sample(source, 1, text, sample.kind, sample.detail)
    return Sample(source, 1, text, "run")


PAGES = sorted(DOCS.rglob("*.md"))
FILES = sorted(set(DOCS.rglob("*.py")) - _hooks())
BY_PAGE = {p.relative_to(DOCS).as_posix(): page_samples(p) for p in PAGES}
BY_FILE = {p.relative_to(DOCS).as_posix(): file_sample(p) for p in FILES}
FENCES = [s for samples in BY_PAGE.values() for s in samples]
RUN_PAGES = [
    page for page, samples in BY_PAGE.items() if any(s.kind in {"run", "requires"} for s in samples)
]
RUN_FILES = [name for name, s in BY_FILE.items() if s.kind in {"run", "requires"}]


def _script(page: str) -> str:
    """The page's runnable fences, each at its own line numbers (tracebacks name page lines)."""
    lines = [""] * (DOCS / page).read_text().count("\n")
    for sample in BY_PAGE[page]:
        if sample.kind in {"run", "requires"}:
            for offset, code_line in enumerate(sample.code.splitlines()):
                lines[sample.line - 1 + offset] = code_line
    return "\n".join(lines) + "\n"


# Runs the page's script as the __main__ module, reported under the page's own path.
RUNNER = "import sys; exec(compile(sys.stdin.read(), sys.argv[1], 'exec'), sys.modules['__main__'].__dict__)"


Result = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class Run:
    """One fresh ``python -W error`` (warnings are errors, as in the test suite)."""

    argv: tuple[str, ...]
    stdin: str | None
    what: str
    servers: frozenset[str]

    def __call__(self, env: dict[str, str], cwd: Path) -> Result:
        return subprocess.run(
            [sys.executable, "-W", "error", *self.argv],
            input=self.stdin,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=TIMEOUT,
            check=False,
        )


def page_run(page: str) -> Run:
    servers = frozenset(s for sample in BY_PAGE[page] for s in sample.servers)
    return Run(
        ("-c", RUNNER, str(DOCS / page)), _script(page), f"the samples of docs/{page}", servers
    )


def file_run(name: str) -> Run:
    return Run((str(DOCS / name),), None, f"docs/{name}", frozenset(BY_FILE[name].servers))


def _env(request: pytest.FixtureRequest | None, servers: frozenset[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVERS.values()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    fixtures = {"redis": "redis_url", "postgres": "postgres_url", "kafka": "kafka_bootstrap"}
    for server in sorted(servers):
        assert request is not None
        env[SERVERS[server]] = request.getfixturevalue(fixtures[server])
    return env


@pytest.fixture(scope="module")
def started(request: pytest.FixtureRequest) -> Iterator[dict[Run, Future[Result]]]:
    """Starts the selected server-free runs, two at a time, as soon as the first is needed.

    Much of a run is interpreter start-up, imports and samples waiting on
    loopback servers, so overlapping two shortens this module's wall time.
    Runs that need a server wait for their test, which provides its fixtures.
    """
    runs = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is sys.modules[__name__] and "page" in params:
            runs.append(page_run(params["page"]))
        elif item.module is sys.modules[__name__] and "name" in params:
            runs.append(file_run(params["name"]))
    # The pool shuts down (waiting for running samples) before their directories go.
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(max_workers=2) as pool:
        futures = {}
        for number, run in enumerate(r for r in runs if not r.servers):
            cwd = Path(scratch) / str(number)
            cwd.mkdir()
            futures[run] = pool.submit(run, _env(None, run.servers), cwd)
        yield futures
        for future in futures.values():
            future.cancel()


def _check(
    run: Run, started: dict[Run, Future[Result]], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    future = started.get(run)
    if future is None or future.cancelled():
        result = run(_env(request, run.servers), tmp_path)
    else:
        result = future.result()
    assert result.returncode == 0, (
        f"{run.what} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
    )


# Every run spawns an interpreter (and some samples start loopback servers): integration.
def _params(names: list[str]) -> list[object]:
    return [pytest.param(name, id=name, marks=pytest.mark.integration) for name in names]


# ----------------------------------------------------------------------------- coverage


def test_the_docs_have_samples_of_every_kind() -> None:
    kinds = {s.kind for s in FENCES}
    assert {"run", "include"} <= kinds
    assert len([s for s in FENCES if s.kind == "run"]) >= 40
    assert FILES


def test_every_fence_and_file_follows_the_convention() -> None:
    invalid = [
        f"{s.where}: {s.detail}" for s in [*FENCES, *BY_FILE.values()] if s.kind == "invalid"
    ]
    assert invalid == []


def test_every_sample_is_run_or_compiled() -> None:
    """The accounting: each fence lands in exactly one bucket that a test below empties."""
    for sample in FENCES:
        if sample.kind in {"run", "requires"}:
            assert sample.source in RUN_PAGES, sample.where
        elif sample.kind == "include":
            assert sample.detail.split(":")[0].removeprefix("docs/") in BY_FILE, sample.where
        else:
            assert sample.kind == "fragment", sample.where
    for name, sample in BY_FILE.items():
        assert sample.kind in {"run", "requires", "fragment"}, name


def test_includes_point_at_sample_files_and_sections_that_exist() -> None:
    for sample in (s for s in FENCES if s.kind == "include"):
        path, _, section = sample.detail.partition(":")
        assert path.startswith("docs/"), f"{sample.where}: show samples that live under docs/"
        target = ROOT / path
        assert target.is_file(), f"{sample.where}: {path} does not exist"
        if section:
            text = target.read_text()
            assert f"# --8<-- [start:{section}]" in text, f"{sample.where}: no section {section}"
            assert f"# --8<-- [end:{section}]" in text, (
                f"{sample.where}: section {section} not closed"
            )


def test_every_sample_file_is_shown_on_a_page() -> None:
    shown = {s.detail.split(":")[0].removeprefix("docs/") for s in FENCES if s.kind == "include"}
    assert sorted(set(BY_FILE) - shown) == []


def test_fragments_compile() -> None:
    fragments = [s for s in [*FENCES, *BY_FILE.values()] if s.kind == "fragment"]
    for sample in fragments:
        at_its_lines = "\n" * (sample.line - 1) + sample.code  # a SyntaxError names the page line
        # Top-level await is allowed: a fragment may be the body of an async function.
        compile(at_its_lines, f"docs/{sample.source}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    assert all(sample.detail for sample in fragments)  # each says why it does not run


# ----------------------------------------------------------------------------- execution


@pytest.mark.parametrize("page", _params(RUN_PAGES))
def test_page_samples_run(
    page: str, started: dict[Run, Future[Result]], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _check(page_run(page), started, request, tmp_path)


@pytest.mark.parametrize("name", _params(RUN_FILES))
def test_sample_file_runs(
    name: str, started: dict[Run, Future[Result]], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _check(file_run(name), started, request, tmp_path)
