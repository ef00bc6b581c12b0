"""``python -m examples.orders_invoices demo | up | serve SERVICE`` (see ``--help``)."""

import argparse
import sys

from examples.orders_invoices import demo, supervisor
from examples.orders_invoices._tracing import TracingUnavailableError
from examples.orders_invoices.supervisor import add_trace_exporter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.orders_invoices")
    sub = parser.add_subparsers(dest="command", required=True)
    run_demo = sub.add_parser("demo", help="run the whole system in one process with chaos")
    run_demo.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="skip printing one order's trace (printed when opentelemetry-sdk is installed)",
    )
    add_trace_exporter(run_demo)
    run_demo.add_argument(
        "--crash-after-charge",
        type=int,
        default=2,
        metavar="N",
        help="how many charges die after Stripe answered (the double-charge scenario; default 2)",
    )
    run_up = sub.add_parser(
        "up", help="every service as its own process on PostgreSQL, Kafka and Redis"
    )
    supervisor.add_arguments(run_up)
    run_serve = sub.add_parser("serve", help="one service (or the fakes) as this process")
    run_serve.add_argument("service", choices=supervisor.PROCESSES)
    run_serve.add_argument(
        "--supervised", action="store_true", help="exit when the parent process (up) is gone"
    )
    supervisor.add_arguments(run_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo.main(
                trace=args.trace,
                exporter=args.trace_exporter,
                crash_after_charge=args.crash_after_charge,
            )
        settings = supervisor.settings_from(args)
        if args.command == "up":
            return supervisor.up(settings)
        return supervisor.serve(args.service, settings, supervised=args.supervised)
    except TracingUnavailableError as exc:
        parser.error(str(exc))  # exits 2 with the message, like any other bad flag


if __name__ == "__main__":
    sys.exit(main())
