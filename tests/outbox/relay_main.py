"""``python tests/outbox/relay_main.py outbox relay ...``: the CLI with the outbox commands
registered, for tests that run (and SIGKILL) the relay as a separate process."""

from __future__ import annotations

import argparse
import sys

from resilience import ResilienceError
from resilience.outbox._cli import register


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="resilience")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ResilienceError as exc:
        print(f"resilience: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
