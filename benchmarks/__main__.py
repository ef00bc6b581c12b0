"""``python -m benchmarks``: run every benchmark group and report ratios.

Writes ``benchmarks/results/latest.json``; with ``--write-docs`` also the JSON,
the markdown table and one plot per group (matplotlib) under ``docs/benchmarks/``.

examples:
  python -m benchmarks --list
  python -m benchmarks --quick                      # CI smoke: every benchmark runs
  python -m benchmarks --only 'breaker*' --only 'retry*'
  python -m benchmarks --write-docs                 # the full run behind the docs page
  python -m benchmarks --render docs/benchmarks/results.json   # redraw the page, no run
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import shlex
import sys
from pathlib import Path

from ._harness import Context, GroupResult, run_group
from ._report import Report, build_report, fmt_ns, load_report, write_docs

ROOT = Path(__file__).resolve().parent
DOCS = ROOT.parent / "docs" / "benchmarks"


def _discover() -> list[str]:
    return sorted(p.stem for p in ROOT.glob("bench_*.py"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few iterations each: checks every benchmark runs, asserts nothing about speed",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="run groups whose name matches GLOB (repeatable)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "results" / "latest.json",
        help="where to write JSON results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="also write results.json, results.md and plots/<group>.png into --docs-dir",
    )
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=DOCS,
        metavar="DIR",
        help="where --write-docs and --render write (default: docs/benchmarks)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: redraw the docs from a results JSON written by an earlier run",
    )
    parser.add_argument("--list", action="store_true", help="list groups and exit")
    return parser


def _run(args: argparse.Namespace, command: str) -> Report | None:
    """Run the selected groups; ``None`` when only listing them."""
    ctx = Context(quick=args.quick)
    results: list[GroupResult] = []
    try:
        groups = []
        for mod_name in _discover():
            module = importlib.import_module(f"benchmarks.{mod_name}")
            groups.extend(module.groups(ctx))
        if args.only:
            groups = [g for g in groups if any(fnmatch.fnmatch(g.name, pat) for pat in args.only)]
        if args.list:
            for g in groups:
                print(f"{g.name:40} {g.title}")
            return None
        for i, group in enumerate(groups, 1):
            print(f"[{i}/{len(groups)}] {group.title}", flush=True)
            results.append(run_group(group, args.quick, progress=lambda s: print(s, flush=True)))
    finally:
        ctx.close()
    return build_report(results, quick=args.quick, command=command)


def _summary(report: Report) -> int:
    """Print the ratios; returns how many targets and budgets were missed."""
    missed = 0
    for group in report["groups"]:
        print(f"== {group['title']} (baseline: {group['baseline']})")
        for name, case in group["cases"].items():
            if case["skipped"]:
                print(f"   {name:38} skipped: {case['skipped']}")
            else:
                ratio = "n/a" if case["ratio"] is None else f"{case['ratio']:.3f}x"
                print(f"   {name:38} {fmt_ns(case['median_ns']):>12}   {ratio:>8}")
        for t in group["targets"]:
            missed += not t["met"]
            ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.3f}x"
            verdict = "ok" if t["met"] else "MISSED"
            print(f"   target {t['case']} <= {t['max_ratio']}x {t['against']}: {ratio} {verdict}")
        for b in group.get("budgets", []):
            missed += not b["met"]
            verdict = "ok" if b["met"] else "MISSED"
            print(
                f"   budget {b['case']} - {b['against']} <= {fmt_ns(b['max_extra_ns'])}: "
                f"{fmt_ns(b['extra_ns'])} {verdict}"
            )
    return missed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    if args.render is not None:
        report = load_report(args.render)
    else:
        ran = _run(args, command)
        if ran is None:
            return 0
        report = ran
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json}")
    print()
    missed = _summary(report)
    if args.write_docs or args.render is not None:
        for path in write_docs(report, args.docs_dir):
            print(f"wrote {path}")
    if missed and not report["quick"]:
        print(f"\n{missed} target(s) or budget(s) missed")
    # A case that did not run (its peer is not installed, its setup failed) makes
    # the figures incomplete: say so with the exit status, so that CI notices.
    skipped = [
        f"{group['name']}/{name}: {case['skipped']}"
        for group in report["groups"]
        for name, case in group["cases"].items()
        if case["skipped"]
    ]
    if skipped:
        print(f"\n{len(skipped)} case(s) did not run:", *skipped, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
