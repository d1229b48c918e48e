"""Stage `report` end to end on a tiny synthetic study written to tmp_path (every input file the stage reads), and
its summary: numbers only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from inflection_layers import report
from inflection_layers.cells import cells as cells_of
from inflection_layers.cells import family, groups, is_peft, sources
from inflection_layers.config import parse_params
from inflection_layers.reporting.claims_base import CLAIM_COLUMNS
from inflection_layers.reporting.figures import FIGURES
from inflection_layers.reporting.verdicts import VERDICTS
from inflection_layers.select import select_group

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "inflection_layers" / "conf"
L, W, N = 4, 32, 40  # layers, width, evaluation sentences per target


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def params_raw(seeds: list[int]) -> dict:
    raw = _merge(
        yaml.safe_load((CONF / "config.yaml").read_text()),
        yaml.safe_load((CONF / "profile" / "smoke.yaml").read_text()),
    )
    raw.pop("defaults", None)
    return _merge(raw, {"study": {"seeds": seeds}, "ski": {"random_draws": 2}, "report": {"bootstrap": 100}})


def run_report(root: Path) -> None:
    old, argv = Path.cwd(), sys.argv
    try:
        os.chdir(root)
        sys.argv = ["report", *ARGS]
        report.main()
    finally:
        os.chdir(old)
        sys.argv = argv


def tidy(rows: list[tuple], key: dict) -> pd.DataFrame:
    return pd.DataFrame([{"layer": l, "metric": m, "value": v} | key for l, m, v in rows])


def write_study(root: Path, seeds: list[int], **overrides: dict) -> None:
    raw = _merge(params_raw(seeds), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    rng = np.random.default_rng(0)
    (root / "metrics" / "source").mkdir(parents=True)
    for s in sources(params.study):
        curve = [
            {
                "epoch": e,
                "train_loss": 0.7 / e,
                "train_confidence": 0.5 + 0.05 * e,
                "dev_accuracy": 0.8,
                "dev_loss": 0.4 + 0.01 * e,
            }
            for e in (1, 2)
        ]
        (root / "metrics" / "source" / f"{s.name}.json").write_text(
            json.dumps(
                {
                    "train_loss": 0.3,
                    "wall_seconds": 5.0,
                    "tokens_per_second": 100.0,
                    "precision": "fp32",
                    "precision_reason": "test",
                    "curve": curve,
                }
            )
        )
    selection = {}
    for g in groups(params.study):
        key = {"target": g.target, "regime": g.regime, "seed": g.seed}
        over = g.regime == "over"
        rows = [(-1, "act_grad", 1e-4)] + [
            (l, m, v)
            for l in range(L)
            for m, v in (
                ("entropy", 2.0 + 0.2 * abs(l - 2) - 0.1 * over),
                ("entropy_norm", 0.5),
                ("act_grad", 1e-4 * (1 + l) * (0.5 if over else 1) * rng.uniform(0.9, 1.1)),
                ("act_grad_cls", 1e-4),
                ("param_grad", 0.1 * (1 + l)),
                ("param_norm", 10.0),
                ("rgn", 0.01 * (1 + l)),
                ("io_change", 0.1 * (4 - l)),
            )
        ]
        d = tidy(rows, key)
        (root / "metrics" / "diagnose").mkdir(parents=True, exist_ok=True)
        d.to_csv(root / "metrics" / "diagnose" / f"{g.name}.csv", index=False)
        (root / "metrics" / "diagnose" / f"{g.name}.json").write_text(json.dumps({"wall_seconds": 2.0, "tokens": 200}))
        sel, _ = select_group(d, params.ski, g)
        selection[g.name] = sel
        (root / "metrics" / "selection").mkdir(parents=True, exist_ok=True)
        (root / "metrics" / "selection" / f"{g.name}.json").write_text(json.dumps(key | sel))
    lora_key = {"lora_selective": "band", "lora_complement": "complement", "lora_rgn": "rgn", "lora_cka": "cka"}
    labels = np.arange(N) % 2
    for cell in cells_of(params):
        g, s, key = cell.group, cell.strategy, cell.key()
        kind = "finetune_peft" if is_peft(s) else "finetune"
        sel = selection[g.name]
        layers = (
            list(range(L))
            if family(s) == "lora_all"
            else sel["random"][int(s[-1])]["layers"]
            if family(s) == "lora_random"
            else sel[lora_key[family(s)]]
            if is_peft(s)
            else []
        )
        params_n = {"none": 0, "head": 2 * W + 2, "shallow": 5000, "full": 20000, "bitfit": 300}.get(
            s, 3 * 2 * 4 * W * len(layers) + 2 * W + 2
        )
        p_right = 0.6 + 0.1 * (g.regime == "over") + 0.1 * (s == "lora_selective")
        pred = np.where(rng.random(N) < p_right, labels, 1 - labels)
        folder = root / "models" / kind / g.name / s
        folder.mkdir(parents=True)
        pd.DataFrame(
            {
                "id": [f"{g.target}-validation-{i}" for i in range(N)],
                "split": "validation",
                "label": labels,
                "prob_pos": pred * 0.8 + 0.1,
                "pred": pred,
            }
        ).to_parquet(folder / "predictions.parquet")
        (root / "metrics" / kind / g.name).mkdir(parents=True, exist_ok=True)
        (root / "metrics" / kind / g.name / f"{s}.json").write_text(
            json.dumps(
                key
                | {
                    "validation_accuracy": float((pred == labels).mean()),
                    "trainable_parameters": params_n,
                    "lora_layers": layers,
                    "num_layers": L,
                    "precision": "fp32",
                    "precision_reason": "test",
                }
            )
        )
        (root / "metrics" / kind / g.name / "stage.json").write_text(
            json.dumps({"wall_seconds": 3.0, "train_tokens": 300, "precision": "fp32"})
        )
        (root / "plots" / kind / g.name).mkdir(parents=True, exist_ok=True)
        lay = (
            []
            if s in ("none", "head")
            else [
                (l, m, v)
                for l in range(L)
                for m, v in (
                    ("entropy", 2.0 + 0.2 * abs(l - 2)),
                    ("act_grad", 1e-4 * (1 + l)),
                    ("param_grad", 0.1 if l >= L - 2 or s == "full" else np.nan),
                )
            ]
        )
        tidy(lay, key).reindex(columns=["layer", "metric", "value", *key]).to_csv(
            root / "plots" / kind / g.name / f"{s}-layers.csv", index=False
        )
    analysed = cells_of(params, analysis_only=True)
    cka = pd.concat(
        [
            tidy(
                [(l, "delta_cka", 0.001 * (1 + l) if c.strategy != "shallow" or l >= L - 2 else 0.0) for l in range(L)],
                c.key(),
            )
            for c in analysed
            if c.strategy != "none"
        ]
    )
    cka.to_csv(root / "metrics" / "cka.csv", index=False)
    (root / "metrics" / "cka.json").write_text(json.dumps({"wall_seconds": 1.0}))
    probes = pd.concat(
        [
            tidy(
                [
                    (l, m, v)
                    for l in range(-1, L)
                    for m, v in (
                        ("linear", 0.6 + 0.05 * l),
                        ("mlp", 0.55),
                        ("linear_shuffled", 0.5),
                        ("mlp_shuffled", 0.5),
                        ("majority", 0.5),
                    )
                ],
                c.key(),
            )
            for c in analysed
        ]
    )
    probes.assign(train_accuracy=0.9).to_csv(root / "metrics" / "probes.csv", index=False)
    (root / "metrics" / "probes.json").write_text(json.dumps({"wall_seconds": 1.0}))
    audit = pd.DataFrame(
        [
            {
                "id": f"{t}-validation-{i}",
                "target": t,
                "split": "validation",
                "in_source": False,
                "in_sst2": t == "rt" and i < 25,
                "phrase_covered": t == "rt" and i < 30,
                "phrase_cover_share": 0.5,
            }
            for t in params.study.targets
            for i in range(N)
        ]
    )
    (root / "data" / "prepared").mkdir(parents=True)
    audit.to_parquet(root / "data" / "prepared" / "audit.parquet")
    counts = {
        t: {
            "validation": {
                "n": N,
                "in_source": 0,
                "in_sst2": 25 if t == "rt" else 0,
                "phrase_covered": 30 if t == "rt" else 0,
            }
        }
        for t in params.study.targets
    }
    (root / "metrics" / "data.json").write_text(json.dumps({"audit": counts}))


ARGS = [
    "--cells",
    "models/finetune",
    "models/finetune_peft",
    "--cell-metrics",
    "metrics/finetune",
    "metrics/finetune_peft",
    "--cell-plots",
    "plots/finetune",
    "plots/finetune_peft",
    "--source",
    "metrics/source",
    "--diagnose",
    "metrics/diagnose",
    "--selection",
    "metrics/selection",
    "--cka",
    "metrics/cka.csv",
    "--probes",
    "metrics/probes.csv",
    "--data-metrics",
    "metrics/data.json",
    "--audit",
    "data/prepared/audit.parquet",
    "--paper",
    str(ROOT / "data" / "paper" / "stated.csv"),
    "--summary",
    "metrics/summary.json",
    "--out",
    "plots/report",
]


def numbers_only(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(numbers_only(v) for v in obj.values())
    return obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    write_study(root, [1, 2])
    run_report(root)
    return root


def test_every_output_is_written(study: Path):
    out = study / "plots" / "report"
    for name in (
        "claims",
        "claim_parts",
        "comparisons",
        "table1",
        "parameters",
        "audit",
        "selection_ablation",
        "bands",
        "timing",
    ):
        assert (out / f"{name}.csv").is_file(), name
    for stem in FIGURES:
        assert (out / f"{stem}.png").stat().st_size > 1000, stem


def test_claims_csv(study: Path):
    claims = pd.read_csv(study / "plots" / "report" / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    assert {
        "id",
        "target",
        "claim",
        "section",
        "paper_value",
        "ours",
        "ci_low",
        "ci_high",
        "n_seeds",
        "test",
        "verdict",
        "reason",
    } <= set(claims.columns)
    assert set(claims["id"]) == {f"P{i}" for i in range(1, 12)} | {"O1", "O2", "O3"}
    assert set(claims["verdict"]) <= set(VERDICTS) and claims["reason"].str.len().min() > 10
    assert set(claims.loc[claims["id"].str.startswith("O"), "source"]) == {"ours"}


def test_figure_csvs_are_tidy(study: Path):
    for stem, (x, *_) in FIGURES.items():
        d = pd.read_csv(study / "plots" / "report" / f"{stem}.csv")
        assert {x, "value", "series", "panel"} <= set(d.columns), stem
        assert len(d) and pd.api.types.is_numeric_dtype(d[x]) and pd.api.types.is_numeric_dtype(d["value"]), stem


def test_summary_has_numbers_only(study: Path):
    s = json.loads((study / "metrics" / "summary.json").read_text())
    assert numbers_only(s)
    assert set(s["verdict_code"].values()) <= {1.0, 0.5, 0.0, -1.0}
    assert isinstance(s["parameters"]["lora_selective"]["min"], int) and s["parameters"]["none"] == {"min": 0, "max": 0}
    assert 0 <= s["accuracy"]["rt"]["over"]["lora_selective"] <= 1 and "lora_selective" in s["clean_sst2"]["over"]
    runs = [
        *(study / "metrics" / "source").glob("*.json"),
        *(
            p
            for kind in ("finetune", "finetune_peft")
            for p in (study / "metrics" / kind).glob("*/*.json")
            if p.name != "stage.json"
        ),
    ]
    assert s["precision"] == {"fp32": len(runs), "bf16": 0}  # every source model and cell, by its resolved precision


def test_report_md_starts_with_the_claim_table(study: Path):
    md = (study / "plots" / "report" / "report.md").read_text()
    first_table = next(line for line in md.splitlines() if line.startswith("|"))
    assert first_table == "| id | target | claim | paper | ours | interval | verdict |"
    for section in (
        "## Table 1",
        "## Layer selection",
        "## Overlap audit",
        "## Statistics and method notes",
        "## Limitations",
        "## Timing",
    ):
        assert section in md
    assert "91.59 ± 0.15" in md  # the paper's OVER selective row beside ours
    assert "the source models saw none of these sentences" in md


def test_comparisons_cover_the_clean_subsets(study: Path):
    comp = pd.read_csv(study / "plots" / "report" / "comparisons.csv")
    assert set(comp.loc[comp["target"] == "rt", "subset"]) == {"all", "clean_sst2", "clean_phrase"}
    assert set(comp.loc[comp["target"] == "cr", "subset"]) == {"all"}
    assert (comp["n_seeds"] == 2).all() and comp["p_holm"].notna().any()


def test_a_profile_without_lora_cr_or_under_degrades_to_inconclusive(tmp_path: Path):
    """One target, one regime, one seed, no LoRA cells: every claim still gets a row, Inconclusive where its inputs are absent."""
    write_study(
        tmp_path,
        [7],
        study={
            "targets": ["rt"],
            "regimes": ["over"],
            "strategies": ["none", "head", "shallow"],
            "peft_strategies": [],
        },
        analysis={"strategies": ["none", "shallow"]},
    )
    run_report(tmp_path)
    claims = pd.read_csv(tmp_path / "plots" / "report" / "claims.csv").set_index("id")
    assert set(claims.index) == {f"P{i}" for i in range(1, 12)} | {"O1", "O2", "O3"}
    for cid in ("P1", "P2", "P3", "P4", "P6", "P7", "O1", "O2", "O3"):
        assert claims.loc[cid, "verdict"] == "Inconclusive", cid
    assert "lacks" in claims.loc["P1", "reason"] or "no " in claims.loc["P1", "reason"]
    assert numbers_only(json.loads((tmp_path / "metrics" / "summary.json").read_text()))
