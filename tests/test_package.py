"""The public API surface is deliberate: sorted __all__, everything importable,
and no optional dependency imported by ``import resilience``."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import resilience
from resilience import ConfigurationError, MissingExtraError, ResilienceError
from resilience._cli import main
from resilience._optional import require

PUBLIC_MODULES = sorted(
    ["resilience"]
    + [
        m.name
        for m in pkgutil.walk_packages(resilience.__path__, "resilience.")
        if not any(part.startswith("_") for part in m.name.split("."))
    ]
)


def _isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 enforces: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_importable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert list(exported) == sorted(exported, key=_isort_key), (
        f"{module_name}.__all__ is not sorted"
    )
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(module, name), f"{module_name}.{name} is in __all__ but missing"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_modules_have_docstrings(module_name: str) -> None:
    assert importlib.import_module(module_name).__doc__


def test_import_resilience_pulls_in_no_optional_dependency() -> None:
    optional = ["redis", "confluent_kafka", "sqlalchemy", "opentelemetry", "psycopg", "starlette"]
    code = (
        "import sys, resilience, resilience.policies, resilience.messaging, resilience.idempotency, "
        "resilience.outbox, resilience.saga, resilience.tracing, resilience.testing\n"
        f"print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_library_error_is_a_resilience_error() -> None:
    errors = [
        getattr(resilience, n)
        for n in resilience.__all__
        if isinstance(getattr(resilience, n), type)
        and issubclass(getattr(resilience, n), BaseException)
    ]
    assert len(errors) > 10
    assert all(issubclass(e, ResilienceError) for e in errors)


def test_configuration_error_names_the_field() -> None:
    err = ConfigurationError("failure_rate_threshold", "must be between 0 and 100")
    assert isinstance(err, ValueError)
    assert err.field == "failure_rate_threshold"
    assert str(err) == "failure_rate_threshold: must be between 0 and 100"


def test_missing_extra_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtraError) as info:
        require("resilience_no_such_module_xyz", "kafka")
    assert isinstance(info.value, ImportError)
    assert "pip install 'resilience-toolkit[kafka]'" in str(info.value)


def test_require_reports_a_broken_transitive_import_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A package that exists but fails to import one of *its* dependencies must not be
    # misreported as "install the extra".
    monkeypatch.setitem(sys.modules, "resilience_fake_pkg", None)
    with pytest.raises(MissingExtraError):
        require("resilience_fake_pkg", "redis")


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"resilience {resilience.__version__}"


def test_cli_help_without_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: resilience" in capsys.readouterr().out


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "resilience", "--help"], capture_output=True, text=True, check=True
    )
    assert "Operate the resilience toolkit" in out.stdout


def test_the_documented_error_tree_matches_the_classes() -> None:
    from resilience import _errors

    doc = _errors.__doc__ or ""
    for name in _errors.__all__:
        if name == "ResilienceError":
            continue
        assert f"── {name}" in doc, f"{name} is missing from the tree"
        # drawn under its direct base: the base's name comes earlier in the tree
        parent = getattr(_errors, name).__mro__[1].__name__
        assert doc.index(parent) < doc.index(f"── {name}"), f"{name} is drawn outside {parent}"
    for name in _errors.__all__:
        assert getattr(resilience, name) is getattr(_errors, name), f"{name} not re-exported"
