"""``python -m examples.orders_invoices demo`` (see ``--help``)."""

import argparse
import sys

from examples.orders_invoices import demo

parser = argparse.ArgumentParser(prog="python -m examples.orders_invoices")
sub = parser.add_subparsers(dest="command", required=True)
run_demo = sub.add_parser("demo", help="run the whole system in one process with chaos, report")
run_demo.add_argument(
    "--trace", action="store_true", help="print the OpenTelemetry trace of one order first"
)
run_demo.add_argument(
    "--crash-after-charge",
    type=int,
    default=2,
    metavar="N",
    help="how many charges die after Stripe answered (the double-charge scenario; default 2)",
)
args = parser.parse_args()
sys.exit(demo.main(trace=args.trace, crash_after_charge=args.crash_after_charge))
