"""mkdocs hooks: pages that are generated from the code so they cannot drift.

``<!-- cli-reference -->`` in a page is replaced by the ``--help`` text of every
``resilience`` command and subcommand, taken from the parser itself.

``<!-- message-catalogue: MODULE -->`` is replaced by the event catalogue that
``MODULE.catalogue()`` declares (see ``examples/_catalogue.py``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Any

from resilience._cli import build_parser

MARKER = "<!-- cli-reference -->"
CATALOGUE = re.compile(r"<!-- message-catalogue: ([\w.]+) -->")
ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public way to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(parser: argparse.ArgumentParser, path: list[str], depth: int) -> list[str]:
    title = " ".join(path)
    lines = [
        f"{'#' * min(depth, 4)} `{title}`",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, child in _subparsers(parser).items():
        lines += _walk(child, [*path, name], depth + 1)
    return lines


def cli_reference() -> str:
    parser = build_parser()
    parser.prog = "resilience"
    return "\n".join(_walk(parser, ["resilience"], 2))


def message_catalogue(module: str) -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the examples are imported as examples.*
    from examples._catalogue import render_catalogue

    return render_catalogue(importlib.import_module(module).catalogue())


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return CATALOGUE.sub(lambda m: message_catalogue(m.group(1)), markdown)
