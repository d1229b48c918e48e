"""Stage `report`: read every earlier stage's outputs, judge the paper's claims P1-P11 and ours O1-O11 by the decision
table fixed before the data, and write the tables, figures and report.md into one folder (atomically) and the
headline numbers into metrics/summary.json.

A failed run leaves the previous report and summary in place: dvc.yaml declares them `persist` (DVC does not delete
them before the stage runs) and both are written only at the end, each by one atomic rename. The readers are
:mod:`~inflection_layers.reporting.inputs`', the verdicts :mod:`~inflection_layers.reporting.claims`', the tables,
figures and prose :mod:`~inflection_layers.reporting.tables`', :mod:`~inflection_layers.reporting.figures`' and
:mod:`~inflection_layers.reporting.markdown`'; the paper's numbers live only in data/paper/.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import pandas as pd

from inflection_layers.artifacts import atomic_path, stage_args, write_json
from inflection_layers.config import Params, load_params
from inflection_layers.errors import run_main
from inflection_layers.reporting import figures, sections, tables
from inflection_layers.reporting.claims import all_claims
from inflection_layers.reporting.claims_base import Evidence
from inflection_layers.reporting.inputs import ReportInputs, read_inputs
from inflection_layers.reporting.stats import seeds_needed

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Judgement:
    """What the report computes from its inputs: per-seed accuracy, the claims and their parts, and every table."""

    acc: pd.DataFrame
    evidence: Evidence
    claims: pd.DataFrame
    parts: pd.DataFrame
    power: pd.DataFrame
    comparisons: pd.DataFrame
    table1: pd.DataFrame
    parameters: pd.DataFrame
    audit: pd.DataFrame
    ablation: pd.DataFrame
    bands: pd.DataFrame
    measures: pd.DataFrame
    timing: pd.DataFrame


def evidence(inputs: ReportInputs, acc: pd.DataFrame) -> Evidence:
    """The frames the claims read."""
    width = tables.infer_width(inputs.cells, inputs.params.lora.rank, len(inputs.params.lora.targets))
    return Evidence(
        acc=acc,
        cells=inputs.cells,
        diagnose=inputs.diagnose,
        heads=inputs.heads,
        layers=inputs.layers,
        curves=inputs.curves,
        selection=inputs.selection,
        intervene=inputs.intervene,
        cka=inputs.cka,
        probes=inputs.probes,
        features=inputs.features,
        paper=inputs.paper,
        decisions=inputs.decisions,
        params=inputs.params,
        num_layers=inputs.depth,
        width=width,
    )


def paper_sd(ev: Evidence, row: pd.Series) -> float:
    """The paper's own seed sd of a difference of two stated accuracy rows (independent arms), where it states both."""
    effect = ev.decisions[(ev.decisions["id"] == row["id"]) & (ev.decisions["part"] == row["part"])]["effect"]
    spec = str(effect.iloc[0]).split(":") if len(effect) else []
    if row["id"] == "P1" and row["role"] == "primary":
        arms = [("over", row["part"]), ("under", row["part"])]
    elif len(spec) == 4 and spec[1] in ("diff", "std"):
        arms = [tuple(x.split("/")) for x in spec[2:4]]
    else:
        return math.nan
    stds = [ev.paper.accuracy(r, s)[1] for r, s in arms]
    return math.nan if None in stds else 100 * math.sqrt(sum(s * s for s in stds))


def power_table(ev: Evidence, parts: pd.DataFrame) -> pd.DataFrame:
    """Prospectively, per primary statistical part: the seeds a t-test over seeds needs to detect its claimed effect
    (d, or the margin) at the report's power, with the paper's stated seed sd and with ours."""
    rep, rows = ev.rep, []
    stat = parts[
        (parts["role"] == "primary") & parts["rule"].isin(["directional", "two_sided", "noninferiority", "equivalence"])
    ]
    for _, r in stat.iterrows():
        scale = 100 if r["unit"] == "points" else 1
        d = r["effect"] if pd.notna(r["effect"]) else r["margin"]
        if d is None or pd.isna(d):
            continue
        ours_sd = r["sd"] * scale if pd.notna(r["sd"]) else math.nan
        theirs = paper_sd(ev, r) if r["unit"] == "points" else math.nan
        rows.append(
            {
                "id": r["id"],
                "target": r["target"],
                "part": r["label"],
                "effect": d * scale,
                "unit": r["unit"],
                "sd_paper": theirs,
                "seeds_paper": seeds_needed(d * scale, theirs, rep.alpha, rep.power),
                "sd_ours": ours_sd,
                "seeds_ours": seeds_needed(d * scale, ours_sd, rep.alpha, rep.power),
                "n_seeds": r["n_seeds"],
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "id",
            "target",
            "part",
            "effect",
            "unit",
            "sd_paper",
            "seeds_paper",
            "sd_ours",
            "seeds_ours",
            "n_seeds",
        ],
    )


def judge(inputs: ReportInputs) -> Judgement:
    """Every claim, part and table of the report."""
    p = inputs.params
    acc = tables.accuracy_table(inputs.predictions)
    ev = evidence(inputs, acc)
    claims, parts = all_claims(ev, list(p.study.targets))
    return Judgement(
        acc=acc,
        evidence=ev,
        claims=claims,
        parts=parts,
        power=power_table(ev, parts),
        comparisons=tables.comparisons(inputs.predictions, p.report),
        table1=tables.table1(acc, inputs.cells, inputs.paper, p, p.report.confidence),
        parameters=tables.parameters_table(inputs.cells, inputs.paper, p, ev.width),
        audit=tables.audit_table(acc, inputs.data),
        ablation=tables.selection_ablation(inputs.diagnose, inputs.selection, p.ski),
        bands=tables.bands_table(inputs.selection),
        measures=tables.measure_sensitivity(inputs.diagnose, inputs.selection, p.ski),
        timing=tables.timing_table(inputs.stages),
    )


def summary(inputs: ReportInputs, j: Judgement) -> dict:
    """metrics/summary.json: the profile and numbers only, so `dvc metrics diff` compares everything. accuracy: mean
    validation accuracy over seeds (fraction) per target x regime x strategy family; clean_sst2: the same on rt's clean
    subset; parameters: exact trainable counts (min, max); verdict_code per claim row (1 / 0.5 / 0 / -1); audit counts;
    precision: how many training runs (source models and cells) resolved to each precision."""

    def r4(x: float) -> float | None:
        return None if x is None or not math.isfinite(x) else round(float(x), 4)

    runs = [
        str(r.get("precision"))
        for r in [*inputs.cells.to_dict("records"), *inputs.source.values()]
        if r.get("precision")
    ]
    out: dict = {
        "profile": inputs.params.study.profile,
        "seeds": int(j.acc["seed"].nunique()) if len(j.acc) else 0,
        "accuracy": {},
        "clean_sst2": {},
        "parameters": {},
        "verdict_code": {},
        "audit": {},
        "precision": {x: runs.count(x) for x in ("fp32", "bf16")},
    }
    fam = j.acc[(j.acc["strategy"] == j.acc["family"]) & (j.acc["split"] == "validation")]
    for (t, r, s, sub), g in fam.groupby(["target", "regime", "strategy", "subset"], sort=False):
        if sub == "all":
            out["accuracy"].setdefault(t, {}).setdefault(r, {})[s] = r4(g["accuracy"].mean())
        elif sub == "clean_sst2" and t == "rt":
            out["clean_sst2"].setdefault(r, {})[s] = r4(g["accuracy"].mean())
    for f, c in inputs.cells.groupby("family", sort=False):
        out["parameters"][f] = {
            "min": int(c["trainable_parameters"].min()),
            "max": int(c["trainable_parameters"].max()),
        }
    for c in j.claims.itertuples():
        out["verdict_code"][f"{c.id}{'' if c.role == 'primary' else '_' + c.role}_{c.target}"] = float(c.verdict_code)
    splits = tuple(inputs.params.finetune.eval_splits)
    for t, by in inputs.data.get("audit", {}).items():
        out["audit"][t] = {
            s: {k: x[k] for k in ("n", "in_source", "in_sst2", "phrase_covered") if isinstance(x.get(k), (int, float))}
            for s, x in by.items()
            if s in splits
        }
    return out


def write_outputs(out: Path, inputs: ReportInputs, j: Judgement, t0: float) -> None:
    """Every figure (CSV and PNG), every table as CSV, and report.md into the (temporary) report folder."""
    drawn = figures.write_all(out, inputs, j.acc, j.bands)
    j.timing = tables.timing_table(inputs.stages | {"report": [{"wall_seconds": time.perf_counter() - t0}]})
    frames = {
        "claims": j.claims,
        "claim_parts": j.parts,
        "power": j.power,
        "comparisons": j.comparisons,
        "table1": j.table1,
        "parameters": j.parameters,
        "audit": j.audit,
        "selection_ablation": j.ablation,
        "bands": j.bands,
        "gradient_measures": j.measures,
        "timing": j.timing,
    }
    for name, df in frames.items():
        df.to_csv(out / f"{name}.csv", index=False)
    (out / "report.md").write_text(sections.render(inputs, j, drawn))


def main() -> None:
    """Parse the paths dvc.yaml gives, read every input, judge, tabulate, draw and write."""
    args = stage_args(
        "Stage `report`: claims, tables, figures and report.md of the study.",
        {
            "cells*": "cell folders (models/finetune models/finetune_peft models/finetune_tau)",
            "cell_metrics*": "per-cell metrics folders, in the same order",
            "cell_plots*": "per-cell layer tables and curves, in the same order",
            "source": "source-model metrics folder (metrics/source)",
            "diagnose": "diagnose folder (metrics/diagnose)",
            "selection": "selection folder (metrics/selection)",
            "intervene": "intervention folder (metrics/intervene)",
            "cka": "metrics/cka.csv (its .json sibling holds the stage's time)",
            "probes": "metrics/probes.csv (likewise)",
            "features": "metrics/features.csv (likewise)",
            "data_metrics": "metrics/data.json",
            "audit": "data/prepared/audit.parquet",
            "paper": "data/paper: stated.csv, decisions.csv, departures.csv",
            "summary": "metrics/summary.json to write",
            "out": "report folder to write (plots/report)",
        },
    )
    t0 = time.perf_counter()
    logging.getLogger("inflection_layers.bands").setLevel(
        logging.WARNING
    )  # the ablation re-runs the rule hundreds of times
    params: Params = load_params()
    inputs = read_inputs(params, args)
    j = judge(inputs)
    with atomic_path(args.out, is_dir=True) as out:
        write_outputs(out, inputs, j, t0)
    write_json(args.summary, summary(inputs, j))
    logger.info(
        "report: %d claim rows (%s) in %.0f s",
        len(j.claims),
        j.claims["verdict"].value_counts().to_dict(),
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    run_main(main)
