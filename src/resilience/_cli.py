"""The ``resilience`` operator command.

Each capability contributes its subcommands through a module listed in
`_COMMAND_MODULES` exposing ``register(subparsers)``; registration must not
import optional dependencies (do that inside the command's handler), so
``resilience --help`` works on a bare install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ._errors import ResilienceError
from ._version import __version__

__all__ = ["build_parser", "main"]

_COMMAND_MODULES: tuple[str, ...] = (
    "resilience.outbox._cli",
    "resilience.saga._cli",
    "resilience.idempotency._cli",
    "resilience.policies._breaker_cli",
)
"""Modules with ``register(subparsers) -> None``, in the order ``--help`` lists them."""

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resilience",
        description="Operate the resilience toolkit: outbox relays, sagas, idempotency records, breakers.",
        epilog=(
            "examples:\n"
            "  resilience outbox status --url postgresql+psycopg://app@db/orders\n"
            "  resilience saga show 0193c0de-7f1e-7a3b-9d2c-5e8f00000001 --url sqlite:///orders.db\n"
            "  resilience breaker status correios --redis redis://127.0.0.1:6379/0\n"
            "\n"
            "Every command has --help with its own examples."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except ResilienceError as exc:
        print(f"resilience: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
