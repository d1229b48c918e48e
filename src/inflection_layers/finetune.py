"""Stages `finetune`, `finetune_peft` and `finetune_tau`: adapt one source model to one target, every cell of a kind.

One stage = one group (target, regime, seed) and one kind (--kind): ``plain`` runs `study.strategies`, ``peft``
`study.peft_strategies` (``lora_random`` expanded into the selection's draws), ``tau`` `study.tau_strategies`;
peft and tau also read the group's selection JSON. Every cell trains `finetune.steps` steps on the same batches
in the same order, records diagnostics at its diagnostic steps if it is analysed (`analysis.strategies`; eval
mode, before that step's update), and is evaluated on the target's `finetune.eval_splits`. Plain cells train one
after the other; peft and tau cells in lockstep (:func:`inflection_layers.adapt.train_runs`).

Writes per cell: <out>/<strategy>/predictions.parquet (id, split, label, prob_pos, pred); for analysed cells the
representations of the analysis sample, cls.npy and mean.npy (L + 1, N, D) float16, and what the `features` stage
needs to rebuild the model (plain: trainable.safetensors, the parameters it trained; peft: the adapter);
<metrics>/<strategy>.json and <metrics>/stage.json (time, tokens/s, precision, cells per pass);
<plots>/<strategy>-layers.csv and <strategy>-curve.csv.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from inflection_layers.adapt import (
    CellRun,
    GroupData,
    build_run,
    evaluate_runs,
    load_group_data,
    make_trunk_model,
    resolve_per_pass,
    score,
    train_runs,
    uses_trunk,
)
from inflection_layers.artifacts import atomic_path, read_json, stage_args, write_csv, write_json
from inflection_layers.cells import FROZEN_ENCODER, STUDY_LISTS, Cell, Group, expand, family
from inflection_layers.config import Params, load_params
from inflection_layers.diagnostics import per_layer_means, tidy
from inflection_layers.errors import InputError, run_main
from inflection_layers.estimate import Tokens, stage_estimate
from inflection_layers.frozen import frozen_cells
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.precision import Precision, resolve
from inflection_layers.strategies import targeted_modules, trainable_parameters
from inflection_layers.training import collate, probe_step, to_device

logger = logging.getLogger(__name__)


def save_model_state(cell_dir: Path, run: CellRun) -> None:
    """What rebuilds an analysed cell's model from its source: the peft adapter, or the trained parameters."""
    if run.layers or family(run.cell.strategy) == "prefix":
        run.model.save_pretrained(cell_dir / "adapter", safe_serialization=True)
        config = (
            cell_dir / "adapter" / "adapter_config.json"
        )  # peft writes target_modules from a set: sort it (byte-stable)
        saved = json.loads(config.read_text())
        if isinstance(saved.get("target_modules"), list):
            saved["target_modules"] = sorted(saved["target_modules"])
        config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    elif run.diag:
        trained = {n: p.detach().contiguous().cpu() for n, p in run.model.named_parameters() if p.requires_grad}
        save_file(trained, str(cell_dir / "trainable.safetensors"))


def write_cell(dirs: tuple[Path, Path, Path], cell: Cell, result: dict, metrics: dict, num_layers: int) -> None:
    """One cell's files in the stage's (temporary) output folders."""
    out, metrics_dir, plots_dir = dirs
    key = cell.key()
    cell_dir = out / cell.strategy
    cell_dir.mkdir()
    result["predictions"].to_parquet(cell_dir / "predictions.parquet", index=False)
    for name, x in (result.get("reps") or {}).items():
        np.save(cell_dir / f"{name}.npy", x)
    if result.get("run") is not None:
        save_model_state(cell_dir, result["run"])
    write_json(metrics_dir / f"{cell.strategy}.json", {**key, **metrics})
    records, curve = result.get("records") or [], result.get("curve") or []
    layers = tidy(per_layer_means(records, num_layers), **key) if records else []
    write_csv(
        plots_dir / f"{cell.strategy}-layers.csv", pd.DataFrame(layers, columns=["layer", "metric", "value", *key])
    )
    frame = pd.DataFrame(curve).assign(**key) if curve else pd.DataFrame(columns=["step", *key])
    write_csv(plots_dir / f"{cell.strategy}-curve.csv", frame)


def run_result(run: CellRun, ev: dict) -> dict:
    """A trained cell's result: probabilities, representations, diagnostics, work and what it trained."""
    reps = {k: ev[k] for k in ("cls", "mean")} if "cls" in ev else None
    return {
        "probs": ev["probs"],
        "reps": reps,
        "records": run.records,
        "curve": run.curve,
        "tokens": run.tokens,
        "seconds": run.seconds,
        "trainable": trainable_parameters(run.model),
        "layers": run.layers,
        "targeted": targeted_modules(run.model),
        "temperature": run.temperature(),
        "run": run,
    }


def plain_results(
    params: Params,
    group: Group,
    strategies: list[str],
    source: Path,
    data: GroupData,
    device: torch.device,
    precision: Precision,
) -> dict[str, dict]:
    """The plain cells: `none` and `head` from one pass of the frozen encoder, the others one after the other."""
    results: dict[str, dict] = {}
    frozen = [s for s in strategies if s in FROZEN_ENCODER]
    if frozen:
        seed_everything(group.seed)
        model = load_model(str(source)).to(device).eval()
        keep = "none" in params.analysis.strategies
        results |= frozen_cells(model, frozen, params, data, device, precision, keep_reps=keep, seed=group.seed)
    for strategy in [s for s in strategies if s not in FROZEN_ENCODER]:
        run = build_run(params, group, strategy, source, None, device)
        train_runs([run], params, data, device, precision)
        results[strategy] = run_result(run, evaluate_runs([run], params, data, device, precision)[strategy])
    return results


def peft_results(
    params: Params,
    group: Group,
    strategies: list[str],
    source: Path,
    data: GroupData,
    selection: dict,
    device: torch.device,
    precision: Precision,
) -> tuple[dict[str, dict], dict]:
    """The peft or intervention cells of a group in lockstep, from a shared trunk where it saves work; stacked
    into passes where `finetune.cells_per_pass` says so. Returns (results, the engine's record)."""
    runs = [build_run(params, group, s, source, selection, device) for s in strategies]
    trunk_model = make_trunk_model(source, device) if uses_trunk(runs) else None
    first = to_device(collate(data.train_ids, data.stream[0], data.pad, data.train_labels), device)
    per_pass, why = resolve_per_pass(
        params.finetune.cells_per_pass, runs, trunk_model, first, precision, params.model.name
    )
    train_runs(runs, params, data, device, precision, trunk_model, per_pass)
    evaluated = evaluate_runs(runs, params, data, device, precision, trunk_model)
    engine = {
        "lockstep_cells": len(runs),
        "shared_trunk": trunk_model is not None,
        "cells_per_pass": per_pass,
        "cells_per_pass_reason": why,
    }
    return {r.cell.strategy: run_result(r, evaluated[r.cell.strategy]) for r in runs}, engine


def cell_metrics(
    params: Params, strategy: str, result: dict, scores: dict, num_layers: int, precision: Precision
) -> dict:
    """The metrics JSON of one cell."""
    seconds, tokens = result["seconds"], result["tokens"]
    return {
        **scores,
        "trainable_parameters": int(sum(result["trainable"].values())),
        "lr": params.lr(strategy) if strategy != "none" else None,
        "adapted_layers": result.get("layers", []),
        "targeted_modules": result.get("targeted", []),
        "temperature": result.get("temperature"),
        "steps": params.finetune.steps if strategy != "none" else 0,
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "num_layers": num_layers,
        **precision.record(),
        "final_loss": result["curve"][-1]["loss"] if result["curve"] else None,
    }


def group_tokens(data: GroupData, group: Group) -> Tokens:
    """The group's token counts per table, for the stage's estimate."""
    evals = {
        f"{group.target}_{s}": [data.eval_ids[i] for i in rows]
        for s, rows in data.eval_frame.groupby("split").groups.items()
    }
    return Tokens.of_ids({f"{group.target}_train": data.train_ids, **evals})


def precision_of(params: Params, source: Path, data: GroupData, device: torch.device) -> tuple[Precision, dict]:
    """The precision the cells will train in (measured on the source where `auto`) and the source's config."""
    probe_model = load_model(str(source)).to(device)
    step = probe_step(probe_model, data.train_ids, data.train_labels, data.pad, params.finetune.batch_size, device)
    return resolve(params.model.precision, device, params.model.name, step), probe_model.config.to_dict()


def write_results(
    params: Params, group: Group, results: dict, data: GroupData, precision: Precision, num_layers: int, dirs: tuple
) -> None:
    """Score every cell's predictions and write its folder (predictions, metrics, diagnostics)."""
    split = params.finetune.eval_splits[0]
    for strategy, result in results.items():
        result["predictions"], scores = score(data.eval_frame, result["probs"])
        metrics = cell_metrics(params, strategy, result, scores, num_layers, precision)
        write_cell(dirs, Cell(group, strategy), result, metrics, num_layers)
        logger.info(
            "%s/%s: %s accuracy %.4f, %d trainable parameters, %.0f s",
            group.name,
            strategy,
            split,
            scores[f"{split}_accuracy"],
            metrics["trainable_parameters"],
            result["seconds"],
        )


def run_group(
    params: Params,
    group: Group,
    kind: str,
    strategies: list[str],
    source: Path,
    data: GroupData,
    selection: dict | None,
    device: torch.device,
    dirs: tuple[Path, Path, Path],
) -> dict:
    """Every cell of one stage; returns the stage's timing record."""
    t0 = time.perf_counter()
    seed_everything(group.seed)
    precision, config = precision_of(params, source, data, device)
    stage = {"plain": "finetune", "peft": "finetune_peft", "tau": "finetune_tau"}[kind] + f"@{group.name}"
    estimated = stage_estimate(params, config, group_tokens(data, group), stage, precision.name, selection)
    results: dict[str, dict] = {}
    engine: dict = {}
    if kind == "plain":
        results = plain_results(params, group, strategies, source, data, device, precision)
    elif strategies:  # a study may run no cell of a kind (study.tau_strategies: []): the stage writes its record only
        results, engine = peft_results(params, group, strategies, source, data, selection, device, precision)
    write_results(
        params, group, {s: results[s] for s in strategies}, data, precision, config["num_hidden_layers"], dirs
    )
    wall, tokens = time.perf_counter() - t0, sum(r["tokens"] for r in results.values())
    return {
        "target": group.target,
        "regime": group.regime,
        "seed": group.seed,
        "kind": kind,
        "cells": len(strategies),
        "wall_seconds": round(wall, 2),
        "estimated_seconds": estimated,
        "train_tokens": tokens,
        "tokens_per_second": round(tokens / wall, 1) if tokens else 0.0,
        **engine,
        **precision.record(),
    }


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate params and inputs, run every cell, write atomically."""
    args = stage_args(
        __doc__,
        {
            "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
            "kind": "plain, peft or tau: which of study's strategy lists",
            "source": "source checkpoint folder",
            "selection?": "selection JSON from `select` (peft and tau)",
            "data": "folder of prepared splits",
            "out": "folder of cell folders: predictions, representations, adapter or trained weights",
            "metrics": "folder of per-cell metrics JSONs",
            "plots": "folder of per-cell layer diagnostics and curves (CSV)",
        },
    )
    params, group, kind = load_params(), args.group, args.kind
    if kind != "plain" and args.selection is None:
        raise InputError(f"the {kind} strategies need the selection JSON of `select` (--selection)")
    selection = read_json(args.selection) if kind != "plain" else None
    names = getattr(params.study, STUDY_LISTS[kind])
    strategies = expand(names, len(selection["random"]) if selection else 0)
    if not (args.source / "config.json").is_file():
        raise InputError(f"{args.source}: no source checkpoint; run `dvc repro source@{group.source.name}` first")
    device = pick_device()
    data = load_group_data(args.data, group, params, load_tokenizer(str(args.source)))
    with contextlib.ExitStack() as stack:  # the three folders appear together, complete, when every cell is done
        dirs = tuple(stack.enter_context(atomic_path(p, is_dir=True)) for p in (args.out, args.metrics, args.plots))
        stage = run_group(params, group, kind, strategies, args.source, data, selection, device, dirs)
        write_json(dirs[1] / "stage.json", stage)
    logger.info("%s (%s): %d cells in %.0f s", group.name, kind, stage["cells"], stage["wall_seconds"])


if __name__ == "__main__":
    run_main(main)
