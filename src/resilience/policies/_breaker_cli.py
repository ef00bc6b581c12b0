"""``resilience breaker ...``: inspect and steer Redis-shared circuit breakers.

During an incident an operator can see what every process of a service
follows (``status``), open the circuit by hand to shed load from a
dependency that is known to be down (``open``, or ``open --forced`` to keep
it open until released), and put it back (``close`` / ``reset``). Every
process applies the change within its ``sync_interval``.

``redis`` is imported only inside the handlers, so ``resilience --help``
works without the extra installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

__all__ = ["register"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the breaker's name (as given to CircuitBreaker)")
    parser.add_argument(
        "--redis", required=True, metavar="URL", help="e.g. redis://127.0.0.1:6379/0"
    )
    parser.add_argument(
        "--prefix",
        default="resilience:",
        help="key prefix given to RedisSharedState (default: %(default)s)",
    )


_REDIS = "--redis redis://127.0.0.1:6379/0 --prefix logistics:"
_EXAMPLES = {
    "status": f"resilience breaker status correios {_REDIS}\n"
    f"  resilience breaker status correios {_REDIS} --window 60 --json",
    "open": f"resilience breaker open correios {_REDIS} --for 300\n"
    f"  resilience breaker open correios {_REDIS} --forced   # until close/reset",
    "close": f"resilience breaker close correios {_REDIS}",
    "reset": f"resilience breaker reset correios {_REDIS}",
}


_DESCRIPTION = """\
Inspect and steer circuit breakers that share their state through Redis
(RedisSharedState). During an incident: see what every process of a service
follows (status), open the circuit by hand to shed load from a dependency known
to be down (open, or open --forced to keep it open until released), and put it
back (close, reset). Every process applies the change within its sync_interval."""


def _action(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    label = "examples" if "\n" in _EXAMPLES[name] else "example"
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=f"{label}:\n  {_EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    return parser


def register(subparsers: Any) -> None:
    """Add the ``breaker`` command and its subcommands to the ``resilience`` CLI."""
    breaker = subparsers.add_parser(
        "breaker",
        help="inspect and steer Redis-shared circuit breakers",
        description=_DESCRIPTION,
        epilog="examples:\n  " + "\n  ".join(_EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = breaker.add_subparsers(title="breaker commands", metavar="ACTION")

    status = _action(commands, "status", "show the shared state and the aggregated window")
    status.add_argument(
        "--window", type=int, default=10, help="seconds of outcomes to sum (default: %(default)s)"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    open_ = _action(commands, "open", "open the circuit in every process")
    open_.add_argument(
        "--for",
        dest="seconds",
        type=float,
        default=60.0,
        help="seconds before trial calls are admitted (default: %(default)s)",
    )
    open_.add_argument(
        "--forced", action="store_true", help="stay open until `close` or `reset` (forced_open)"
    )
    open_.set_defaults(handler=_open)

    close = _action(commands, "close", "close the circuit in every process")
    close.set_defaults(handler=_close)

    reset = _action(
        commands, "reset", "close the circuit and forget the aggregated window in every process"
    )
    reset.set_defaults(handler=_close)

    breaker.set_defaults(handler=lambda _args: _help(breaker))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _client(url: str) -> Any:
    from resilience._optional import require

    redis = require("redis", "redis")
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)


def _print(status: Any, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(asdict(status)))
        return
    print(f"breaker      {status.name}")
    print(f"state        {status.state}")
    if status.state == "open":
        print(f"retry after  {status.retry_after:.1f}s")
    print(f"version      {status.version}" + (f" ({status.reason})" if status.reason else ""))
    print(
        f"window       {status.calls} calls, {status.failed_calls} failed, {status.slow_calls} slow"
    )


def _run(action: Any) -> int:
    from resilience._errors import ResilienceError

    try:
        return int(action())
    except ResilienceError:
        raise  # the CLI's main prints it and exits 1
    except Exception as exc:  # redis errors (unreachable, auth, ...): say so, exit 1
        print(f"resilience: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _status(args: argparse.Namespace) -> int:
    from ._breaker_redis import read_status

    def action() -> int:
        status = read_status(_client(args.redis), args.name, args.prefix, args.window)
        _print(status, args.json)
        return 0

    return _run(action)


def _open(args: argparse.Namespace) -> int:
    from ._breaker_redis import publish_state

    state = "forced_open" if args.forced else "open"

    def action() -> int:
        _print(publish_state(_client(args.redis), args.name, state, args.prefix, args.seconds))
        return 0

    return _run(action)


def _close(args: argparse.Namespace) -> int:
    from ._breaker_redis import publish_state

    def action() -> int:
        _print(publish_state(_client(args.redis), args.name, "closed", args.prefix))
        return 0

    return _run(action)
