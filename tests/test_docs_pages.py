"""The docs pages that describe the code are checked against it, so they cannot drift.

The Python samples are run by test_docs_samples; this module checks the prose
parts that name code: the drawn exception hierarchy, the API reference, the
metric names on the operations page, the home page's promises and the CLI's help.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from pathlib import Path

import resilience
from resilience import ResilienceError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_PACKAGES = [
    "resilience",
    "resilience.compat.pybreaker",
    "resilience.idempotency",
    "resilience.messaging",
    "resilience.outbox",
    "resilience.policies",
    "resilience.saga",
    "resilience.testing",
    "resilience.tracing",
]


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(resilience.__path__, "resilience."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def _error_classes() -> list[type[BaseException]]:
    """Every subclass of ResilienceError the package defines, wherever it lives."""
    for name in _public_modules():
        importlib.import_module(name)
    found: list[type[BaseException]] = [ResilienceError]
    for cls in found:
        found.extend(c for c in cls.__subclasses__() if c not in found)
    return [c for c in found if c.__module__.startswith("resilience.")]


def _expected_edges() -> set[tuple[str, str, str]]:
    edges = set()
    for cls in _error_classes():
        for base in cls.__bases__:
            ours = base.__module__.startswith("resilience.")
            edges.add((base.__name__, "-->" if ours else "-.->", cls.__name__))
    return edges


def _mermaid(edges: set[tuple[str, str, str]]) -> str:
    """What the diagram should say, printed when it drifts (paste, then add labels)."""
    return "\n".join(f"    {a} {arrow} {b}" for a, arrow, b in sorted(edges))


# ----------------------------------------------------------------------------- errors


def test_the_drawn_exception_hierarchy_is_the_real_one() -> None:
    page = (DOCS / "errors.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", page, re.DOTALL)
    assert block is not None, "errors.md draws the hierarchy in a mermaid block"
    edge = re.compile(r"^\s*(\w+)(?:\[[^\]]*\])?\s*(-->|-\.->)\s*(\w+)(?:\[[^\]]*\])?\s*$")
    drawn = {m.groups() for m in map(edge.match, block.group(1).splitlines()) if m}
    expected = _expected_edges()
    assert drawn == expected, "errors.md's diagram should be:\n" + _mermaid(expected)


def test_the_errors_module_tree_is_the_real_one() -> None:
    """The text tree in resilience._errors' docstring (what a reader of the code sees)."""
    from resilience import _errors

    doc = _errors.__doc__ or ""
    tree = doc[doc.index("ResilienceError\n") : doc.rindex("```")]
    parents: dict[int, str] = {}
    drawn = set()
    for line in tree.splitlines()[1:]:
        match = re.match(r"^([│ ]*)[├└]── (\w+)", line)
        assert match is not None, line
        depth = len(match.group(1)) // 4
        parents[depth] = match.group(2)
        drawn.add((parents.get(depth - 1, "ResilienceError"), match.group(2)))
    defined = {
        (cls.__bases__[0].__name__, cls.__name__)
        for cls in _error_classes()
        if cls.__module__ == "resilience._errors" and cls is not ResilienceError
    }
    assert drawn == defined


# ----------------------------------------------------------------------------- reference


def _directives() -> set[str]:
    found = set()
    for page in DOCS.rglob("*.md"):
        found.update(re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE))
    return found


def _rendered(directive: str) -> dict[str, object]:
    """What a ``::: path`` directive shows: one object, or a whole module's ``__all__``."""
    try:
        module = importlib.import_module(directive)
    except ImportError:
        parent, _, name = directive.rpartition(".")
        return {name: getattr(importlib.import_module(parent), name)}
    if directive == "resilience":
        return {}  # reference/resilience.md renders the package docstring only
    return {name: getattr(module, name) for name in getattr(module, "__all__", ())}


def test_every_public_name_is_in_the_api_reference() -> None:
    """Each name of a public ``__all__`` is rendered by a mkdocstrings ``:::`` directive."""
    rendered = [obj for d in _directives() for obj in _rendered(d).values()]
    missing = []
    for package in PUBLIC_PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if name.startswith("__") or any(obj is shown for shown in rendered):
                continue
            missing.append(f"{package}.{name}")
    assert missing == []


# ----------------------------------------------------------------------------- pages


def test_the_home_page_has_the_two_readme_commands_and_a_quickstart_per_capability() -> None:
    home = (DOCS / "index.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", readme, re.MULTILINE), f"README lost `{command}`"
        assert re.search(rf"^{command}\b", home, re.MULTILINE), f"index.md lacks `{command}`"
    tabs = re.split(r'^=== "([^"]+)"\n', home, flags=re.MULTILINE)
    quickstarts = dict(zip(tabs[1::2], tabs[2::2], strict=True))
    assert set(quickstarts) == {"Idempotency", "Policies", "Outbox and inbox", "Sagas", "Tracing"}
    for capability, body in quickstarts.items():
        assert "```python" in body, f"{capability}: no sample"
        link = re.search(r"\]\(([\w/-]+\.md)[^)]*\)", body)
        assert link is not None, f"{capability}: no link to its guide"
        assert (DOCS / link.group(1)).is_file()


def test_the_operations_page_names_real_metrics_and_components() -> None:
    from resilience.tracing import _metrics

    page = (DOCS / "operations.md").read_text()
    metrics = {_metrics.CALLS_METRIC, _metrics.EVENTS_METRIC, _metrics.STATE_METRIC}
    named = set(re.findall(r"`(resilience\.(?:calls|events|state))`", page))
    assert named == metrics
    listed = re.search(
        r"Components \(the `resilience\.component` values\):(.*?)\.\n", page, re.DOTALL
    )
    assert listed is not None
    components = re.findall(r"`(\w+)`", listed.group(1))
    assert "circuit_breaker" in components
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "resilience").rglob("*.py"))
    for component in components:
        assert f'"{component}"' in source, f"no component emits {component!r}"


# ----------------------------------------------------------------------------- CLI


def _commands() -> dict[str, tuple[argparse.ArgumentParser, dict[str, str]]]:
    """Every command path → (its parser, its subcommands' one-line helps)."""
    from resilience._cli import build_parser

    found: dict[str, tuple[argparse.ArgumentParser, dict[str, str]]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        helps: dict[str, str] = {}
        for action in parser._actions:  # argparse has no public way to list subcommands
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
        found[path] = (parser, helps)

    walk(build_parser(), "resilience")
    return found


def test_every_command_is_listed_with_a_one_line_description() -> None:
    for path, (_, helps) in _commands().items():
        for name, text in helps.items():
            assert text, f"`{path} {name}` has no one-line help"
            assert "\n" not in text, f"`{path} {name}`: keep the help to one line"


def test_every_command_help_has_examples() -> None:
    lacking = [
        path
        for path, (parser, _) in _commands().items()
        if re.search(r"^examples?:$", parser.format_help(), re.MULTILINE) is None
    ]
    assert lacking == []
