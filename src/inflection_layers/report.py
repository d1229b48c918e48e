"""Stage `report`: read every earlier stage's outputs, judge the paper's claims P1-P11 and ours O1-O3, and write
the tables, figures and report.md into one folder (atomically) and the headline numbers into metrics/summary.json.

The statistics are :mod:`inflection_layers.reporting.stats`' and the verdict words :mod:`inflection_layers.reporting.verdicts`';
the claims are in :mod:`~inflection_layers.reporting.claims` and :mod:`~inflection_layers.reporting.claims_layers`, the tables in
:mod:`~inflection_layers.reporting.tables`, the figures in :mod:`~inflection_layers.reporting.figures`, the text in
:mod:`~inflection_layers.reporting.markdown`; the paper's numbers only in data/paper/stated.csv (:mod:`~inflection_layers.reporting.paper`).
"""

from __future__ import annotations

import logging
import math
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

from inflection_layers.artifacts import atomic_path, read_csv, read_json, read_parquet, stage_args, write_json
from inflection_layers.cells import cells as cells_of
from inflection_layers.cells import groups, locate, sources
from inflection_layers.config import load_params
from inflection_layers.errors import InputError, run_main
from inflection_layers.reporting import figures, markdown, tables
from inflection_layers.reporting.claims import all_claims
from inflection_layers.reporting.claims_base import Evidence
from inflection_layers.reporting.paper import Paper, setup

logger = logging.getLogger(__name__)

CELL_KEYS = (
    "validation_accuracy",
    "test_accuracy",
    "trainable_parameters",
    "lora_layers",
    "num_layers",
    "precision",
    "precision_reason",
    "train_seconds",
    "tokens_per_second",
    "steps",
    "lr",
)
FLAGS = ("in_source", "in_sst2", "phrase_covered")
FIG_FOR = {
    "P1": ["fig1_accuracy_vs_params"],
    "P2": ["fig1_accuracy_vs_params"],
    "P5": ["fig2_entropy", "fig3_act_grad"],
    "P6": ["fig3_act_grad", "fig4_param_grad"],
    "P7": ["ski", "selectors"],
    "P8": ["fig2_entropy"],
    "P9": ["fig5_probes"],
    "P10": ["delta_cka"],
    "O1": ["random_bands"],
    "O2": ["random_bands"],
}


def tidy_concat(paths: list[Path]) -> pd.DataFrame:
    frames = [f for f in (read_csv(p) for p in paths) if not f.empty]
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["layer", "metric", "value", "target", "regime", "seed"])
    )


def read_cells(params, roots: list[Path]) -> pd.DataFrame:
    """One row per cell of the params: its key and the metrics JSON's fields."""
    rows = []
    for cell in cells_of(params):
        j = read_json(locate(roots, cell, ".json"))
        rows.append(cell.key() | {k: j.get(k) for k in CELL_KEYS})
    df = pd.DataFrame(rows)
    if len(df):
        df["trainable_parameters"] = df["trainable_parameters"].astype(int)
        df["lora_layers"] = df["lora_layers"].map(lambda x: list(x) if isinstance(x, list) else [])
    return df


def read_predictions(params, roots: list[Path], audit: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, dict]]:
    """target -> (examples: id, split and the audit's flags; {(regime, seed, strategy): right (N,) bool}), cells paired by position."""
    out = {}
    for target in params.study.targets:
        examples, correct, first = None, {}, None
        for cell in [c for c in cells_of(params) if c.group.target == target]:
            path = locate(roots, cell) / "predictions.parquet"
            df = read_parquet(path, ["id", "split", "label", "pred"])
            if examples is None:
                examples, first = df[["id", "split"]].reset_index(drop=True), path
            elif not np.array_equal(df["id"].to_numpy(), examples["id"].to_numpy()):
                raise InputError(
                    f"{path}: its sentences differ from {first}'s; the cells of a target must be paired by position: rerun `dvc repro finetune finetune_peft`"
                )
            correct[(cell.group.regime, cell.group.seed, cell.strategy)] = (
                df["pred"].to_numpy() == df["label"].to_numpy()
            )
        if examples is not None:
            a = audit[audit["target"] == target].drop_duplicates("id")[["id", *[f for f in FLAGS if f in audit]]]
            out[target] = (examples.merge(a, on="id", how="left"), correct)
    return out


def read_selection(params, folder: Path) -> pd.DataFrame:
    rows = []
    for g in groups(params.study):
        j = read_json(folder / f"{g.name}.json")
        rows.append(
            {
                "target": g.target,
                "regime": g.regime,
                "seed": g.seed,
                **{
                    k: j.get(k)
                    for k in (
                        "band",
                        "complement",
                        "rgn",
                        "cka",
                        "random",
                        "scores",
                        "candidates",
                        "num_layers",
                        "params",
                    )
                },
            }
        )
    return pd.DataFrame(rows)


def stage_records(roots: list[Path], params) -> dict[str, list[dict]]:
    """stage.json of every group, per root (the root's folder name is the stage: finetune, finetune_peft)."""
    out: dict[str, list[dict]] = {}
    for root in roots:
        for g in groups(params.study):
            path = Path(root) / g.name / "stage.json"
            if path.is_file():
                j = read_json(path)
                out.setdefault(Path(root).name, []).append(
                    {
                        "wall_seconds": j.get("wall_seconds"),
                        "tokens": j.get("train_tokens"),
                        "precision": j.get("precision"),
                        "precision_reason": j.get("precision_reason"),
                    }
                )
    return out


def summary(
    claims: pd.DataFrame,
    acc: pd.DataFrame,
    cells: pd.DataFrame,
    data: dict,
    splits: tuple[str, ...] = ("validation",),
    precisions: list[str] | None = None,
) -> dict:
    """metrics/summary.json: numbers only. accuracy: mean validation accuracy over seeds (fraction) per target x
    regime x strategy (lora_random: the mean of its draws), clean_sst2 the same on rt's clean subset; parameters:
    exact trainable counts (min and max over cells); verdict_code: 1 / 0.5 / 0 / -1; audit: the overlap counts of the
    evaluated splits; precision: how many stage runs (source models and cells) resolved to each precision. Numbers
    only, so that `dvc metrics diff` compares everything; the reasons for the precision are in report.md."""

    def r4(x: float) -> float | None:
        return None if x is None or not math.isfinite(x) else round(float(x), 4)

    out: dict = {
        "seeds": int(acc["seed"].nunique()) if len(acc) else 0,
        "accuracy": {},
        "clean_sst2": {},
        "parameters": {},
        "verdict_code": {},
        "audit": {},
        "precision": {p: (precisions or []).count(p) for p in ("fp32", "bf16")},
    }
    fam = acc[(acc["strategy"] == acc["family"]) & (acc["split"] == "validation")]
    for (t, r, s, sub), g in fam.groupby(["target", "regime", "strategy", "subset"], sort=False):
        if sub == "all":
            out["accuracy"].setdefault(t, {}).setdefault(r, {})[s] = r4(g["accuracy"].mean())
        elif sub == "clean_sst2" and t == "rt":
            out["clean_sst2"].setdefault(r, {})[s] = r4(g["accuracy"].mean())
    for f, c in cells.groupby("family", sort=False):
        out["parameters"][f] = {
            "min": int(c["trainable_parameters"].min()),
            "max": int(c["trainable_parameters"].max()),
        }
    for c in claims.itertuples():
        out["verdict_code"][f"{c.id}_{c.target}"] = float(c.verdict_code)
    for t, by in data.get("audit", {}).items():
        out["audit"][t] = {
            s: {k: x[k] for k in ("n", "in_source", "in_sst2", "phrase_covered") if isinstance(x.get(k), (int, float))}
            for s, x in by.items()
            if s in splits
        }
    return out


def main() -> None:
    """Parse the paths dvc.yaml gives, read every input, judge, tabulate, draw and write."""
    args = stage_args(
        "Stage `report`: claims, tables, figures and report.md of the study.",
        {
            "cells*": "cell folders (models/finetune models/finetune_peft)",
            "cell_metrics*": "per-cell metrics (metrics/finetune metrics/finetune_peft)",
            "cell_plots*": "per-cell layer tables (plots/finetune plots/finetune_peft)",
            "source": "source-model metrics folder (metrics/source)",
            "diagnose": "diagnose folder (metrics/diagnose)",
            "selection": "selection folder (metrics/selection)",
            "cka": "metrics/cka.csv (its .json sibling holds the stage's time)",
            "probes": "metrics/probes.csv (its .json sibling holds the stage's time)",
            "data_metrics": "metrics/data.json",
            "audit": "data/prepared/audit.parquet",
            "paper": "data/paper/stated.csv",
            "summary": "metrics/summary.json to write",
            "out": "report folder to write (plots/report)",
        },
    )
    t0 = time.perf_counter()
    logging.getLogger("inflection_layers.select").setLevel(
        logging.WARNING
    )  # the ablation re-runs the rule hundreds of times
    params = load_params()
    paper = Paper.read(args.paper)
    cells = read_cells(params, args.cell_metrics)
    data, audit = read_json(args.data_metrics), read_parquet(args.audit, ["id", "target", "split"])
    preds = read_predictions(params, args.cells, audit)
    layers = tidy_concat([locate(args.cell_plots, c, "-layers.csv") for c in cells_of(params)])
    diagnose = tidy_concat([args.diagnose / f"{g.name}.csv" for g in groups(params.study)])
    diag_json = {g.name: read_json(args.diagnose / f"{g.name}.json") for g in groups(params.study)}
    selection = read_selection(params, args.selection)
    source = {s.name: read_json(args.source / f"{s.name}.json") for s in sources(params.study)}
    cka, probes = read_csv(args.cka), read_csv(args.probes)
    stage_times = stage_records(args.cell_metrics, params)
    depth = int(cells["num_layers"].dropna().max()) if len(cells) and cells["num_layers"].notna().any() else None
    width = tables.infer_width(cells, params.lora.rank, len(params.lora.targets))

    acc = tables.accuracy_table(preds)
    ev = Evidence(
        acc=acc,
        cells=cells,
        diagnose=diagnose,
        layers=layers,
        selection=selection,
        cka=cka,
        probes=probes,
        paper=paper,
        params=params,
        num_layers=depth,
        width=width,
    )
    claims, parts = all_claims(ev, list(params.study.targets))
    comp = tables.comparisons(preds, params.report)
    bands = tables.bands_table(selection)
    d = types.SimpleNamespace(
        params=params,
        claims=claims,
        parts=parts,
        selection=selection,
        depth=depth,
        width=width,
        stated_setup=setup(paper),
        data=data,
        source=source,
        table1=tables.table1(acc, cells, paper, params, params.report.confidence),
        parameters=tables.parameters_table(cells, paper, params, width),
        audit=tables.audit_table(acc, data),
        ablation=tables.selection_ablation(diagnose, selection, params.ski),
        fig_for=FIG_FOR,
    )
    runs = [
        rec for rec in [*cells.to_dict("records"), *source.values()] if rec.get("precision")
    ]  # source models and cells
    resolved, precision = [str(rec["precision"]) for rec in runs], {}
    for rec in [*runs, *[x for v in stage_times.values() for x in v if x.get("precision")]]:
        precision.setdefault(rec["precision"], rec.get("precision_reason") or "no reason recorded")
    d.precision = precision
    with atomic_path(args.out, is_dir=True) as out:
        d.figures = figures.write_all(out, acc, cells, diagnose, layers, cka, probes, selection, bands, source)
        records = {
            "prepare": [data] if data.get("wall_seconds") else [],
            "source": [
                {"wall_seconds": j.get("wall_seconds"), "tokens_per_second": j.get("tokens_per_second")}
                for j in source.values()
            ],
            "diagnose": [
                {"wall_seconds": j.get("wall_seconds"), "tokens": j.get("tokens")} for j in diag_json.values()
            ],
            **stage_times,
            **{
                name: [read_json(p.with_suffix(".json"))]
                for name, p in (("cka", args.cka), ("probes", args.probes))
                if p.with_suffix(".json").is_file()
            },
            "report": [{"wall_seconds": time.perf_counter() - t0}],
        }
        d.timing = tables.timing_table(records)
        for name, df in (
            ("claims", claims),
            ("claim_parts", parts),
            ("comparisons", comp),
            ("table1", d.table1),
            ("parameters", d.parameters),
            ("audit", d.audit),
            ("selection_ablation", d.ablation),
            ("bands", bands),
            ("timing", d.timing),
        ):
            df.to_csv(out / f"{name}.csv", index=False)
        (out / "report.md").write_text(markdown.render(d))
    write_json(args.summary, summary(claims, acc, cells, data, tuple(params.finetune.eval_splits), resolved))
    logger.info(
        "report: %d claim rows (%s) in %.0f s",
        len(claims),
        claims["verdict"].value_counts().to_dict(),
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    run_main(main)
