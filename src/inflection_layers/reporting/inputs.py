"""Everything the report reads, in one typed bundle (:class:`ReportInputs`), and the readers that fill it from the
paths dvc.yaml gives the `report` stage. Every file goes through the safe readers of :mod:`inflection_layers.artifacts`,
so a damaged input names itself and the stage that writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inflection_layers.artifacts import read_csv, read_json, read_parquet
from inflection_layers.cells import cells as cells_of
from inflection_layers.cells import groups, locate, sources
from inflection_layers.errors import InputError
from inflection_layers.reporting.decisions import read_decisions
from inflection_layers.reporting.paper import Paper

CELL_KEYS = (
    "validation_accuracy",
    "test_accuracy",
    "trainable_parameters",
    "adapted_layers",
    "targeted_modules",
    "num_layers",
    "precision",
    "precision_reason",
    "train_seconds",
    "tokens_per_second",
    "steps",
    "lr",
    "temperature",
)
FLAGS = ("in_source", "in_sst2", "phrase_covered")
TIDY = ["layer", "metric", "value", "target", "regime", "seed"]


@dataclasses.dataclass
class ReportInputs:
    """The report's inputs: params and the paper's files; per cell its metrics, predictions, layer diagnostics and
    curves; per group its source-model diagnostics, selection and intervention; the analyses; the stages' records."""

    params: Any
    paper: Paper
    decisions: pd.DataFrame
    departures: pd.DataFrame
    cells: pd.DataFrame
    predictions: dict[str, tuple[pd.DataFrame, dict]]
    layers: pd.DataFrame
    curves: pd.DataFrame
    diagnose: pd.DataFrame
    heads: pd.DataFrame
    selection: pd.DataFrame
    intervene: pd.DataFrame
    cka: pd.DataFrame
    probes: pd.DataFrame
    features: pd.DataFrame
    source: dict[str, dict]
    data: dict
    stages: dict[
        str, list[dict]
    ]  # stage name -> its runs' records (wall_seconds, estimated_seconds, tokens, precision)

    @property
    def depth(self) -> int | None:
        known = self.cells["num_layers"].dropna() if len(self.cells) else []
        return int(known.max()) if len(known) else None


def tidy_concat(paths: list[Path], columns: list[str] = TIDY) -> pd.DataFrame:
    """One frame of several tidy CSVs (empty ones left out)."""
    frames = [f for f in (read_csv(p) for p in paths) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def draw_counts(selection: pd.DataFrame) -> dict[str, int]:
    """Group name -> its number of random bands (the lora_random cells it trained)."""
    return {f"{r.target}-{r.regime}-{r.seed}": len(r.random) for r in selection.itertuples()}


def read_cells(params: Any, roots: list[Path], counts: dict[str, int]) -> pd.DataFrame:
    """One row per cell of the params: its key and the metrics JSON's fields."""
    rows = [
        cell.key() | {k: read_json(locate(roots, cell, ".json")).get(k) for k in CELL_KEYS}
        for cell in cells_of(params, counts=counts)
    ]
    df = pd.DataFrame(rows)
    if len(df):
        df["trainable_parameters"] = df["trainable_parameters"].astype(int)
        df["adapted_layers"] = df["adapted_layers"].map(lambda x: list(x) if isinstance(x, list) else [])
    return df


def read_predictions(
    params: Any, roots: list[Path], audit: pd.DataFrame, counts: dict[str, int]
) -> dict[str, tuple[pd.DataFrame, dict]]:
    """target -> (examples: id, split and the audit's flags; {(regime, seed, strategy): right (N,) bool}), paired
    by position."""
    out = {}
    for target in params.study.targets:
        examples, correct, first = None, {}, None
        for cell in [c for c in cells_of(params, counts=counts) if c.group.target == target]:
            path = locate(roots, cell) / "predictions.parquet"
            df = read_parquet(path, ["id", "split", "label", "pred"])
            if examples is None:
                examples, first = df[["id", "split"]].reset_index(drop=True), path
            elif not np.array_equal(df["id"].to_numpy(), examples["id"].to_numpy()):
                raise InputError(
                    f"{path}: its sentences differ from {first}'s; the cells of a target must be paired by position: "
                    "rerun `dvc repro finetune finetune_peft finetune_tau`"
                )
            correct[(cell.group.regime, cell.group.seed, cell.strategy)] = (
                df["pred"].to_numpy() == df["label"].to_numpy()
            )
        if examples is not None:
            a = audit[audit["target"] == target].drop_duplicates("id")[["id", *[f for f in FLAGS if f in audit]]]
            out[target] = (examples.merge(a, on="id", how="left"), correct)
    return out


def read_selection(params: Any, folder: Path) -> pd.DataFrame:
    """One row per group: every band of its selection JSON, the scores and the rule's params."""
    keys = ("band", "top", "complement", "rgn", "cka", "random", "scores", "candidates", "num_layers", "params")
    rows = [
        {
            "target": g.target,
            "regime": g.regime,
            "seed": g.seed,
            **{k: read_json(folder / f"{g.name}.json").get(k) for k in keys},
        }
        for g in groups(params.study)
    ]
    return pd.DataFrame(rows)


def stage_records(params: Any, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Per stage, its runs' timing records: the metrics JSONs of source, diagnose and intervene, stage.json of the
    finetune stages (the root's folder name is the stage), and the analyses' JSONs."""
    keys = ("wall_seconds", "estimated_seconds", "precision", "precision_reason")
    grab = lambda j, extra=(): {k: j.get(k) for k in (*keys, *extra)}  # noqa: E731
    out: dict[str, list[dict]] = {
        "source": [
            grab(read_json(args.source / f"{s.name}.json"), ("tokens_per_second",)) for s in sources(params.study)
        ]
    }
    for name, folder in (("diagnose", args.diagnose), ("intervene", args.intervene)):
        out[name] = [grab(read_json(folder / f"{g.name}.json"), ("tokens",)) for g in groups(params.study)]
    for root in args.cell_metrics:
        for g in groups(params.study):
            if (Path(root) / g.name / "stage.json").is_file():
                j = read_json(Path(root) / g.name / "stage.json")
                out.setdefault(Path(root).name, []).append(grab(j) | {"tokens": j.get("train_tokens")})
    for name, p in (("cka", args.cka), ("probes", args.probes), ("features", args.features)):
        if p.with_suffix(".json").is_file():
            out[name] = [grab(read_json(p.with_suffix(".json")))]
    return out


def read_inputs(params: Any, args: argparse.Namespace) -> ReportInputs:
    """Read every input the `report` stage is given."""
    selection = read_selection(params, args.selection)
    counts = draw_counts(selection)
    audit = read_parquet(args.audit, ["id", "target", "split"])
    cells = read_cells(params, args.cell_metrics, counts)
    every = cells_of(params, counts=counts)
    gs = groups(params.study)
    return ReportInputs(
        params=params,
        paper=Paper.read(args.paper / "stated.csv"),
        decisions=read_decisions(args.paper / "decisions.csv"),
        departures=read_csv(args.paper / "departures.csv", ["key", "why"]),
        cells=cells,
        predictions=read_predictions(params, args.cells, audit, counts),
        layers=tidy_concat([locate(args.cell_plots, c, "-layers.csv") for c in every]),
        curves=tidy_concat(
            [locate(args.cell_plots, c, "-curve.csv") for c in every], ["step", "target", "regime", "seed", "strategy"]
        ),
        diagnose=tidy_concat([args.diagnose / f"{g.name}.csv" for g in gs]),
        heads=tidy_concat(
            [args.diagnose / f"{g.name}-heads.csv" for g in gs],
            ["layer", "head", "entropy", "target", "regime", "seed"],
        ),
        selection=selection,
        intervene=tidy_concat([args.intervene / f"{g.name}.csv" for g in gs], [*TIDY, "placement", "band", "tau"]),
        cka=read_csv(args.cka),
        probes=read_csv(args.probes),
        features=read_csv(args.features),
        source={s.name: read_json(args.source / f"{s.name}.json") for s in sources(params.study)},
        data=read_json(args.data_metrics),
        stages=stage_records(params, args),
    )
