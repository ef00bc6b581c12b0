"""mkdocs hooks: pages that are generated from the code so they cannot drift.

``<!-- cli-reference -->`` in a page is replaced by the ``--help`` text of every
``resilience`` command and subcommand, taken from the parser itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from resilience._cli import build_parser

MARKER = "<!-- cli-reference -->"


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


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
