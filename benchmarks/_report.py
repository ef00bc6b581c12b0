"""From measured groups to the docs: a JSON file, a markdown table and one plot per group.

Everything a reader sees is rendered from the JSON report, never from live
objects, so ``python -m benchmarks --render results.json`` redraws the page of a
run made elsewhere (the quiet machine) and the table always matches the plots.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import NotRequired, TypedDict

from ._harness import GroupResult

__all__ = [
    "CaseReport",
    "GroupReport",
    "Report",
    "build_report",
    "fmt_ns",
    "load_report",
    "render_markdown",
    "write_docs",
]

PLOTS = "plots"
BASELINE_COLOUR, CASE_COLOUR, TARGET_COLOUR = "#2b8a3e", "#1c7ed6", "#e03131"


class CaseReport(TypedDict):
    median_ns: float | None
    samples_ns: list[float]
    skipped: str
    note: str
    ratio: float | None
    ratio_min: float | None  # of the per-round ratios
    ratio_max: float | None


class TargetReport(TypedDict):
    case: str
    max_ratio: float
    against: str
    ratio: float | None
    met: bool


class BudgetReport(TypedDict):
    case: str
    max_extra_ns: float
    against: str
    extra_ns: float | None
    met: bool


class GroupReport(TypedDict):
    name: str
    title: str
    baseline: str
    rounds: int
    cases: dict[str, CaseReport]
    targets: list[TargetReport]
    budgets: NotRequired[list[BudgetReport]]  # absent from reports written before budgets


class Machine(TypedDict):
    arch: str
    cpus: int | None
    cpu: str
    system: str


class Report(TypedDict):
    quick: bool
    command: str
    python: str
    machine: Machine
    date: str
    groups: list[GroupReport]


def _num(value: float) -> float | None:
    """JSON has no NaN: a figure that could not be measured is ``null``."""
    return None if math.isnan(value) else value


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor()


def build_report(results: list[GroupResult], *, quick: bool, command: str) -> Report:
    groups: list[GroupReport] = []
    for res in results:
        cases: dict[str, CaseReport] = {}
        for name, case in res.cases.items():
            lo, hi = res.ratio_spread(name)
            cases[name] = CaseReport(
                median_ns=_num(case.median_ns),
                samples_ns=case.samples_ns,
                skipped=case.skipped,
                note=case.note,
                ratio=_num(res.ratio(name)),
                ratio_min=_num(lo),
                ratio_max=_num(hi),
            )
        targets = [
            TargetReport(
                case=t.case,
                max_ratio=t.max_ratio,
                against=t.against or res.group.baseline,
                ratio=_num(ratio),
                met=ok,
            )
            for t, ratio, ok in res.target_rows()
        ]
        budgets = [
            BudgetReport(
                case=b.case,
                max_extra_ns=b.max_extra_ns,
                against=b.against or res.group.baseline,
                extra_ns=_num(extra),
                met=ok,
            )
            for b, extra, ok in res.budget_rows()
        ]
        rounds = max((len(c.samples_ns) for c in res.cases.values()), default=0)
        groups.append(
            GroupReport(
                name=res.group.name,
                title=res.group.title,
                baseline=res.group.baseline,
                rounds=rounds,
                cases=cases,
                targets=targets,
                budgets=budgets,
            )
        )
    return Report(
        quick=quick,
        command=command,
        python=platform.python_version(),
        machine=Machine(
            arch=platform.machine(),
            cpus=os.cpu_count(),
            cpu=_cpu_model(),
            system=f"{platform.system()} {platform.release()}",
        ),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        groups=groups,
    )


def load_report(path: Path) -> Report:
    report: Report = json.loads(path.read_text())
    return report


def fmt_ns(ns: float | None) -> str:
    if ns is None or math.isnan(ns):
        return "n/a"
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.2f} µs"
    return f"{ns:,.0f} ns"


def _fmt_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}×"


def machine_line(report: Report) -> str:
    m = report["machine"]
    cpu = f" ({m['cpu']})" if m["cpu"] else ""
    return f"{m['arch']}{cpu}, {m['cpus']} cores, Python {report['python']}, {m['system']}"


def plot_name(group: GroupReport) -> str:
    return re.sub(r"[^\w.-]", "_", group["name"]) + ".png"


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _measured(group: GroupReport) -> list[tuple[str, CaseReport]]:
    return [(n, c) for n, c in group["cases"].items() if c["ratio"] is not None]


def _target_ratio_to_baseline(group: GroupReport, target: TargetReport) -> float | None:
    """A target against another case, expressed on the plot's baseline axis."""
    against = group["cases"].get(target["against"])
    if against is None or against["ratio"] is None:
        return None
    return target["max_ratio"] * against["ratio"]


def _plot_group(group: GroupReport, report: Report, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = _measured(group)
    names = [n for n, _ in rows]
    ratios = [_or(c["ratio"], 0.0) for _, c in rows]
    # Whiskers span the per-round ratios; clipped at the bar because the bar is the
    # ratio of medians, which a skewed pair of rounds can leave just outside them.
    lows = [max(r - _or(c["ratio_min"], r), 0.0) for r, (_, c) in zip(ratios, rows, strict=True)]
    highs = [max(_or(c["ratio_max"], r) - r, 0.0) for r, (_, c) in zip(ratios, rows, strict=True)]

    fig, ax = plt.subplots(figsize=(8, 1.3 + 0.42 * len(rows)))
    ax.barh(
        names,
        ratios,
        xerr=[lows, highs],
        capsize=3,
        color=[BASELINE_COLOUR if n == group["baseline"] else CASE_COLOUR for n in names],
    )
    ax.axvline(1.0, color="#495057", linewidth=0.8, linestyle="--")
    limits: list[float] = []
    for target in group["targets"]:
        limit = _target_ratio_to_baseline(group, target)
        if limit is not None and target["case"] in names:
            row = names.index(target["case"])
            ax.plot([limit, limit], [row - 0.4, row + 0.4], color=TARGET_COLOUR, linewidth=2)
            limits.append(limit)
    right = max([*(r + h for r, h in zip(ratios, highs, strict=True)), *limits])
    if max(ratios) / max(min(ratios), 1e-12) > 8:
        ax.set_xscale("log")  # a 0.03× and a 3× case both stay readable
        ax.set_xlim(right=right * 2.5)  # room for the value labels
    else:
        ax.set_xlim(0, max(right, 1.0) * 1.18)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}×"))
    for row, (ratio, high) in enumerate(zip(ratios, highs, strict=True)):
        ax.annotate(
            f" {ratio:.3f}×",
            (ratio + high, row),
            va="center",
            fontsize=7,
            annotation_clip=False,
        )
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_title(group["title"], fontsize=9)
    rounds = group["rounds"]
    ax.set_xlabel(
        "time per operation ÷ the baseline's (green)\n"
        f"bars: median of {rounds} round{'s' * (rounds != 1)} · "
        "whiskers: min–max of the per-round ratios · red: target",
        fontsize=7,
    )
    fig.text(
        0.01, 0.005, f"{machine_line(report)} · {report['date'][:10]}", fontsize=6, color="#868e96"
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_plots(report: Report, directory: Path) -> dict[str, str]:
    """One PNG per group with measured ratios; returns group name → file name.

    Returns nothing (and the page shows only tables) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for group in report["groups"]:
        if _measured(group):
            _plot_group(group, report, directory / plot_name(group))
            written[group["name"]] = plot_name(group)
    for stale in directory.glob("*.png"):
        if stale.name not in written.values():
            stale.unlink()  # a group that was renamed or did not run this time
    return written


def render_markdown(report: Report, plots: dict[str, str]) -> str:
    lines = [
        "<!-- generated by `python -m benchmarks --write-docs`; do not edit by hand -->",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_line(report)}  ",
        f"Date: {report['date'][:16].replace('T', ' ')} UTC",
        "",
    ]
    if report["quick"]:
        lines += [
            "!!! warning",
            "    A `--quick` run: a few iterations each, not a measurement.",
            "",
        ]
    for group in report["groups"]:
        lines += [
            f"### {group['title']}",
            "",
            f"Baseline: **{group['baseline']}**; median of {group['rounds']} interleaved rounds.",
            "",
            "| case | median per op | spread (min–max) | ratio to baseline | per-round ratios (min–max) |",
            "|---|---|---|---|---|",
        ]
        for name, case in group["cases"].items():
            if case["skipped"]:
                lines.append(f"| {name} | skipped ({case['skipped']}) | | | |")
                continue
            samples = case["samples_ns"]
            lo, hi = (min(samples), max(samples)) if samples else (None, None)
            lines.append(
                f"| {name} | {fmt_ns(case['median_ns'])} | {fmt_ns(lo)} – {fmt_ns(hi)} "
                f"| {_fmt_ratio(case['ratio'])} "
                f"| {_fmt_ratio(case['ratio_min'])} – {_fmt_ratio(case['ratio_max'])} |"
            )
        if group["targets"]:
            lines += ["", "| target | measured | met |", "|---|---|---|"]
            for t in group["targets"]:
                met = "yes" if t["met"] else "**no**"
                lines.append(
                    f"| {t['case']} ≤ {t['max_ratio']}× {t['against']} "
                    f"| {_fmt_ratio(t['ratio'])} | {met} |"
                )
        if group.get("budgets"):
            lines += ["", "| budget | measured | met |", "|---|---|---|"]
            for b in group.get("budgets", []):
                met = "yes" if b["met"] else "**no**"
                lines.append(
                    f"| {b['case']} − {b['against']} ≤ {fmt_ns(b['max_extra_ns'])} "
                    f"| {fmt_ns(b['extra_ns'])} | {met} |"
                )
        if group["name"] in plots:
            lines += [
                "",
                f"![{group['title']}: time per operation as a ratio to {group['baseline']}]"
                f"({PLOTS}/{plots[group['name']]})",
            ]
        lines.append("")
    return "\n".join(lines)


def write_docs(report: Report, docs_dir: Path) -> list[Path]:
    """Write ``results.json``, ``plots/<group>.png`` and ``results.md`` into *docs_dir*."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    data = docs_dir / "results.json"
    data.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    plots = write_plots(report, docs_dir / PLOTS)
    table = docs_dir / "results.md"
    table.write_text(render_markdown(report, plots))
    return [data, *(docs_dir / PLOTS / name for name in plots.values()), table]
