"""``python -m benchmarks --write-docs`` writes JSON, a table and one ratio plot per group.

Runs real (``--quick``) benchmark groups that need no server, into a temporary
docs directory: the committed results are only regenerated on a quiet machine.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from benchmarks.__main__ import main
from benchmarks._harness import Budget, CaseResult, Group, GroupResult
from benchmarks._report import build_report, render_markdown, write_docs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = ["baseline.call", "breaker.sync", "breaker.async"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    only = [arg for pattern in ("baseline*", "breaker*") for arg in ("--only", pattern)]
    code = main(
        [
            "--quick",
            *only,
            "--json",
            str(out / "latest.json"),
            "--write-docs",
            "--docs-dir",
            str(out / "docs"),
        ]
    )
    assert code == 0
    return out / "docs"


def _image(path: Path) -> tuple[int, int]:
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def test_one_png_plot_per_group_is_embedded_in_the_table(written: Path) -> None:
    plots = sorted(p.name for p in (written / "plots").iterdir())
    assert plots == sorted(f"{g}.png" for g in GROUPS)
    for name in plots:
        width, height = _image(written / "plots" / name)
        assert width > 400
        assert height > 100
    table = (written / "results.md").read_text()
    embedded = re.findall(r"!\[[^\]]+\]\((plots/[^)]+\.png)\)", table)
    assert sorted(embedded) == [f"plots/{p}" for p in plots]


def test_the_table_names_the_machine_the_command_and_every_case(written: Path) -> None:
    table = (written / "results.md").read_text()
    report = json.loads((written / "results.json").read_text())
    assert "--quick --only 'baseline*' --only 'breaker*'" in report["command"]
    assert f"Command: `{report['command']}`" in table
    machine = report["machine"]
    assert f"{machine['cpus']} cores" in table
    assert machine["arch"] in table
    assert "A `--quick` run" in table
    assert [g["name"] for g in report["groups"]] == GROUPS
    for group in report["groups"]:
        assert f"### {group['title']}" in table
        baseline = group["cases"][group["baseline"]]
        assert baseline["ratio"] == 1.0
        for name, case in group["cases"].items():
            assert f"| {name} |" in table
            if not case["skipped"]:
                assert case["median_ns"] > 0
                assert case["ratio_min"] <= case["ratio_max"]


def test_render_redraws_the_same_page_from_the_json_and_drops_stale_plots(
    written: Path, tmp_path: Path
) -> None:
    again = tmp_path / "docs"
    (again / "plots").mkdir(parents=True)
    (again / "plots" / "renamed.group.png").write_bytes(PNG_MAGIC)
    assert main(["--render", str(written / "results.json"), "--docs-dir", str(again)]) == 0
    assert (again / "results.md").read_text() == (written / "results.md").read_text()
    assert json.loads((again / "results.json").read_text()) == json.loads(
        (written / "results.json").read_text()
    )
    assert sorted(p.name for p in (again / "plots").iterdir()) == sorted(f"{g}.png" for g in GROUPS)


def _result(samples: dict[str, list[float]], skipped: str = "") -> GroupResult:
    names = list(samples)
    group = Group(name="g.x", title="Synthetic", baseline=names[0], cases=[])
    cases = {n: CaseResult(n, samples_ns=s) for n, s in samples.items()}
    if skipped:
        cases[names[0]].skipped = skipped
    return GroupResult(group, cases)


def test_ratio_spread_pairs_the_interleaved_rounds() -> None:
    # Round 2 was slow for both cases: the per-round ratio stays 0.5 throughout,
    # while dividing extremes from different rounds would claim 0.05 to 5.
    res = _result({"peer": [100.0, 1000.0, 100.0], "ours": [50.0, 500.0, 50.0]})
    assert res.ratio_spread("ours") == (0.5, 0.5)
    assert res.ratio("ours") == pytest.approx(0.5)


def test_a_missing_baseline_gives_null_ratios_and_no_plot(tmp_path: Path) -> None:
    res = _result({"peer": [], "ours": [50.0, 60.0]}, skipped="not installed: peer")
    report = build_report([res], quick=False, command="python -m benchmarks")
    ours = report["groups"][0]["cases"]["ours"]
    assert ours["ratio"] is None
    assert ours["ratio_min"] is None
    assert ours["median_ns"] == 55.0
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere
    written = write_docs(report, tmp_path)
    assert not list((tmp_path / "plots").glob("*.png"))
    table = (tmp_path / "results.md").read_text()
    assert "| peer | skipped (not installed: peer) |" in table
    assert "| ours | 55 ns | 50 ns – 60 ns | n/a | n/a – n/a |" in table
    assert "![" not in table
    assert [p.name for p in written] == ["results.json", "results.md"]
    assert render_markdown(report, {}) == table
    assert math.isnan(res.ratio("ours"))


def test_a_case_that_did_not_run_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = _result({"peer": [], "ours": [50.0, 60.0]}, skipped="setup failed: OSError: refused")
    saved = tmp_path / "latest.json"
    saved.write_text(json.dumps(build_report([res], quick=True, command="python -m benchmarks")))
    assert main(["--render", str(saved), "--docs-dir", str(tmp_path / "docs")]) == 1
    err = capsys.readouterr().err
    assert "1 case(s) did not run" in err
    assert "peer: setup failed: OSError: refused" in err


def test_a_budget_compares_medians_and_shows_in_the_table(tmp_path: Path) -> None:
    group = Group(
        name="g.budget",
        title="Synthetic budget",
        baseline="bare",
        cases=[],
        budgets=[Budget("wrapped", 3_000.0), Budget("slow", 3_000.0)],
    )
    samples = {"bare": [100.0, 300.0], "wrapped": [2_900.0, 3_100.0], "slow": [3_500.0, 3_700.0]}
    res = GroupResult(group, {n: CaseResult(n, samples_ns=s) for n, s in samples.items()})
    report = build_report([res], quick=False, command="python -m benchmarks")
    budgets = report["groups"][0].get("budgets", [])
    assert [(b["case"], b["extra_ns"], b["met"]) for b in budgets] == [
        ("wrapped", 2_800.0, True),
        ("slow", 3_400.0, False),
    ]
    table = render_markdown(report, {})
    assert "| wrapped − bare ≤ 3.00 µs | 2.80 µs | yes |" in table
    assert "| slow − bare ≤ 3.00 µs | 3.40 µs | **no** |" in table
