"""Stage `report` on a whole tiny study (tests/study.py: every stage's real outputs, 2 targets x 2 regimes x 2 seeds):
every output, one primary row per paper claim, the decision table's completeness, the band tests and power table in
report.md, a summary of numbers, and no torch in the stage's process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from inflection_layers.reporting.claims_base import CLAIM_COLUMNS, PART_COLUMNS
from inflection_layers.reporting.decisions import read_decisions
from inflection_layers.reporting.figures import FIGURES
from inflection_layers.reporting.verdicts import RULES, VERDICTS

ROOT = Path(__file__).resolve().parents[1]
PAPER_CLAIMS = [f"P{i}" for i in range(1, 11)]
OURS = [f"O{i}" for i in range(1, 12)]

pytestmark = pytest.mark.slow


def report_dir(study: Path) -> Path:
    return study / "plots" / "report"


def test_every_output_is_written(tiny_study: Path):
    out = report_dir(tiny_study)
    for stem in FIGURES:
        assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.png").stat().st_size > 1000, stem
    for name in (
        "claims",
        "claim_parts",
        "power",
        "comparisons",
        "table1",
        "parameters",
        "audit",
        "selection_ablation",
        "bands",
        "gradient_measures",
        "timing",
    ):
        assert (out / f"{name}.csv").is_file(), name
    assert (tiny_study / "metrics" / "summary.json").is_file()


def test_one_primary_row_per_paper_claim_and_target_and_ours_as_separate_rows(tiny_study: Path):
    claims = pd.read_csv(report_dir(tiny_study) / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS and set(claims["verdict"]) <= set(VERDICTS)
    primary = claims[claims["role"] == "primary"]
    for target in ("rt", "cr"):
        assert sorted(primary.loc[primary["target"] == target, "id"]) == sorted(PAPER_CLAIMS + OURS) or target == "cr"
    assert set(primary.loc[primary["target"] == "all", "id"]) == {"P11a", "P11b"}
    assert not primary.duplicated(["id", "target"]).any()
    assert set(claims.loc[claims["role"] == "extension", "source"]) == {"ours"}
    assert (claims["profile"] == "smoke").all() and {"n_seeds", "test", "rule", "level"} <= set(claims.columns)
    stat = claims[(claims["n_seeds"] >= 2) & (claims["rule"] != "categorical")]
    assert len(stat) and stat["level"].between(0.89, 0.96).all()  # every interval has its level


def test_every_claim_id_in_the_report_has_a_decision_and_every_part_a_rule(tiny_study: Path):
    table = read_decisions(ROOT / "data" / "paper" / "decisions.csv")
    claims = pd.read_csv(report_dir(tiny_study) / "claims.csv")
    parts = pd.read_csv(report_dir(tiny_study) / "claim_parts.csv")
    assert set(zip(claims["id"], claims["role"], strict=True)) <= set(zip(table["id"], table["role"], strict=True))
    judged = parts[parts["role"] != "context"]
    assert list(parts.columns) == PART_COLUMNS and judged["rule"].isin(RULES).all()
    assert judged.loc[judged["rule"] != "categorical", "effect_source"].str.len().min() > 5


def test_report_md_opens_with_the_claims_and_gives_the_band_tests_and_the_power_table(tiny_study: Path):
    md = (report_dir(tiny_study) / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("# ") and "## Claims" in lines[4:6]
    table = lines[lines.index("## Claims") + 2]
    assert table.startswith("| id | target | claim | paper | ours | interval (level) | rule | seeds | verdict |")
    for needle in (
        "rank of the SKI band among its group's bands",
        "within-group trend",
        "selective - lora_top",
        "## How many seeds each claim needs",
        "Where this run departs from the paper",
        "estimate (s)",
    ):
        assert needle in md, needle
    assert ("no detectable effect" not in md and "signature of over-training" not in md) or "consecutive" in md


def test_summary_has_the_profile_and_otherwise_numbers_only(tiny_study: Path):
    summary = json.loads((tiny_study / "metrics" / "summary.json").read_text())
    assert summary.pop("profile") == "smoke"

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        else:
            yield x

    assert all(v is None or isinstance(v, (int, float)) for v in leaves(summary))
    assert summary["seeds"] == 2 and summary["verdict_code"]["P1_rt"] in (1.0, 0.5, 0.0, -1.0)


def test_the_figure_csvs_are_tidy(tiny_study: Path):
    for stem, (x, *_) in FIGURES.items():
        df = pd.read_csv(report_dir(tiny_study) / f"{stem}.csv")
        assert {x, "value", "series", "panel"} <= set(df.columns), stem


def stage_argv(stage: str, tmp: Path) -> list[str]:
    """The stage's arguments on the tiny study, its outputs redirected into `tmp`."""
    from study import REPORT_ARGS, flags

    if stage == "report":
        args = list(REPORT_ARGS)
        args[args.index("--summary") + 1], args[args.index("--out") + 1] = (
            str(tmp / "summary.json"),
            str(tmp / "report"),
        )
        return args
    return {
        "validate": flags(out=str(tmp / "v.json")),
        "prepare": flags(out=str(tmp / "prepared"), metrics=str(tmp / "data.json")),
        "select": flags(
            group="rt-over-7",
            layers="metrics/diagnose/rt-over-7.csv",
            out=str(tmp / "s.json"),
            table=str(tmp / "s.csv"),
        ),
    }[stage]


@pytest.mark.parametrize("stage", ["validate", "prepare", "select", "report"])
def test_a_stage_that_trains_nothing_never_imports_torch_or_transformers(stage: str, tiny_study: Path, tmp_path: Path):
    """Their start-up is only what they need: the whole run, in a fresh interpreter, leaves torch and transformers
    unloaded."""
    code = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('LOADED', sorted(k for k in ('torch', 'transformers', 'peft') "
        "if k in sys.modules))); "
        f"sys.argv = ['{stage}', *sys.argv[1:]]; runpy.run_module('inflection_layers.{stage}', run_name='__main__')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, *stage_argv(stage, tmp_path)],
        cwd=tiny_study,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "LOADED []" in res.stdout, res.stdout


def test_the_setup_table_gives_the_encoders_depth_and_width(tiny_study: Path):
    rows = [line for line in (report_dir(tiny_study) / "report.md").read_text().splitlines() if "depth x width" in line]
    assert len(rows) == 1 and "| 3 x 32 |" in rows[0]  # the tiny BERT of tests/study.py: 3 layers, hidden 32
