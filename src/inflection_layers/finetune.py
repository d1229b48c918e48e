"""Stages `finetune` and `finetune_lora`: adapt one source model to one target with every strategy of a kind.

One stage = one group (target, regime, seed); `finetune` runs `study.strategies`, `finetune_lora`
(flag --lora) runs `study.lora_strategies` (``lora_random`` expanded into its draws), which also need
the group's selection JSON and the `lora.*` params. One cell trains `finetune.steps` steps on the
target's train split (the same batches in the same order for every strategy of a group), records
diagnostics every `finetune.diag_every` steps (in eval mode, before that step's update), then
evaluates on the target's `finetune.eval_splits`. The cells run one after the other in one process.

Strategies whose encoder is frozen (`none`, `head`) share one pass of the source encoder over the
evaluation sentences and over the train examples the batch stream uses; `head` then trains on
those features. Every other cell starts from the source checkpoint on disk.

Writes, per cell: <out>/<strategy>/predictions.parquet (id, split, label, prob_pos, pred); for the
cells of `analysis.strategies` (the only ones whose adaptation-time diagnostics are recorded), the representations of the analysis sample (the evaluation splits
in order) at every hidden state, cls.npy ([CLS]) and mean.npy (mean over tokens), each (L + 1, N, D)
float16; for LoRA, the peft adapter; <metrics>/<strategy>.json and <metrics>/stage.json (wall time,
tokens/s, precision); <plots>/<strategy>-layers.csv and <strategy>-curve.csv.
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

from inflection_layers.adapt import GroupData, frozen_cells, load_group_data, score, train_cell
from inflection_layers.artifacts import atomic_path, read_json, stage_args, write_csv, write_json
from inflection_layers.cells import FROZEN_ENCODER, Cell, Group, expand, family, is_lora
from inflection_layers.config import Params, load_params
from inflection_layers.diagnostics import per_layer_means, tidy
from inflection_layers.errors import InputError, run_main
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.precision import resolve
from inflection_layers.strategies import apply_strategy, lora_layers, targeted_modules, trainable_parameters
from inflection_layers.training import (
    predict,
    probe_step,
)

logger = logging.getLogger(__name__)


def write_cell(
    dirs: tuple[Path, Path, Path],
    cell: Cell,
    predictions: pd.DataFrame,
    reps: dict | None,
    metrics: dict,
    records: list[dict],
    curve: list[dict],
    num_layers: int,
    adapter: torch.nn.Module | None,
) -> None:
    """One cell's files in the stage's (temporary) output folders."""
    out, metrics_dir, plots_dir = dirs
    key = cell.key()
    cell_dir = out / cell.strategy
    cell_dir.mkdir()
    predictions.to_parquet(cell_dir / "predictions.parquet", index=False)
    for name, x in (reps or {}).items():
        np.save(cell_dir / f"{name}.npy", x)
    if adapter is not None:
        adapter.save_pretrained(cell_dir / "adapter", safe_serialization=True)
        config = (
            cell_dir / "adapter" / "adapter_config.json"
        )  # peft writes target_modules from a set: sort it (byte-stable)
        saved = json.loads(config.read_text())
        saved["target_modules"] = (
            sorted(saved["target_modules"]) if isinstance(saved["target_modules"], list) else saved["target_modules"]
        )
        config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    write_json(metrics_dir / f"{cell.strategy}.json", {**key, **metrics})
    layers = tidy(per_layer_means(records, num_layers), **key) if records else []
    write_csv(
        plots_dir / f"{cell.strategy}-layers.csv", pd.DataFrame(layers, columns=["layer", "metric", "value", *key])
    )
    write_csv(
        plots_dir / f"{cell.strategy}-curve.csv",
        pd.DataFrame(curve).assign(**key) if curve else pd.DataFrame(columns=["step", *key]),
    )


def run_group(
    params: Params,
    group: Group,
    strategies: list[str],
    source: Path,
    data: GroupData,
    selection: dict | None,
    device: torch.device,
    dirs: tuple[Path, Path, Path],
) -> dict:
    """Every cell of one stage, one after the other; returns the stage's timing record."""
    keep = set(params.analysis.strategies)
    seed_everything(group.seed)
    model = load_model(str(source)).to(device)
    precision = resolve(
        params.model.precision,
        device,
        params.model.name,
        probe_step(model, data.train_ids, data.train_labels, data.pad, params.finetune.batch_size, device),
    )
    L = model.config.num_hidden_layers
    results: dict[str, dict] = {}
    frozen = [s for s in strategies if s in FROZEN_ENCODER]
    if frozen:
        results |= frozen_cells(
            model.eval(), frozen, params, data, device, precision, keep_reps="none" in keep, seed=group.seed
        )
    tokens, t_stage = 0, time.perf_counter()
    for strategy in strategies:
        cell = Cell(group, strategy)
        layers = lora_layers(strategy, L, selection) if is_lora(strategy) else []
        adapter = None
        if strategy in results:
            r = results[strategy]
            probs, reps, records, curve, n_tok, seconds, trainable = (
                r["probs"],
                r["reps"],
                [],
                r["curve"],
                r["tokens"],
                r["seconds"],
                r["trainable"],
            )
        else:
            seed_everything(group.seed)
            model = apply_strategy(
                load_model(str(source)), strategy, shallow_k=params.finetune.shallow_k, lora=params.lora, layers=layers
            ).to(device)
            trainable = trainable_parameters(model)
            t0 = time.perf_counter()
            records, curve, n_tok = train_cell(
                model,
                params,
                data,
                device,
                precision,
                params.lr(strategy),
                cell.name,
                diagnose=family(strategy) in keep,
            )
            seconds = time.perf_counter() - t0
            ev = predict(
                model,
                data.eval_ids,
                params.finetune.eval_batch_size,
                data.pad,
                device,
                precision,
                reps=family(strategy) in keep,
            )
            probs, reps = ev["probs"], ({k: ev[k] for k in ("cls", "mean")} if family(strategy) in keep else None)
            adapter = model if is_lora(strategy) else None
        tokens += n_tok
        predictions, scores = score(data.eval_frame, probs)
        metrics = {
            **scores,
            "trainable_parameters": int(sum(trainable.values())),
            "lr": params.lr(strategy) if strategy != "none" else None,
            "lora_layers": layers,
            "targeted_modules": targeted_modules(adapter) if adapter is not None else [],
            "steps": params.finetune.steps if strategy != "none" else 0,
            "train_seconds": round(seconds, 2),
            "tokens_per_second": round(n_tok / seconds, 1) if seconds > 0 else None,
            "num_layers": L,
            **precision.record(),
            "final_loss": curve[-1]["loss"] if curve else None,
        }
        write_cell(dirs, cell, predictions, reps, metrics, records, curve, L, adapter)
        logger.info(
            "%s: %s accuracy %.4f, %d trainable parameters, %.0f s",
            cell.name,
            params.finetune.eval_splits[0],
            scores[f"{params.finetune.eval_splits[0]}_accuracy"],
            metrics["trainable_parameters"],
            seconds,
        )
    wall = time.perf_counter() - t_stage
    return {
        "target": group.target,
        "regime": group.regime,
        "seed": group.seed,
        "cells": len(strategies),
        "wall_seconds": round(wall, 2),
        "train_tokens": tokens,
        "tokens_per_second": round(tokens / wall, 1) if wall > 0 else None,
        "attention": model.config._attn_implementation if hasattr(model, "config") else None,
        **precision.record(),
    }


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate params and inputs, run every cell of the group, write atomically."""
    args = stage_args(
        __doc__,
        {
            "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
            "lora": "run study.lora_strategies (needs --selection), else study.strategies",
            "source": "source checkpoint folder",
            "selection?": "selection JSON from `select` (LoRA strategies)",
            "data": "folder of prepared splits",
            "out": "folder of cell folders: predictions, representations, adapter",
            "metrics": "folder of per-cell metrics JSONs",
            "plots": "folder of per-cell layer diagnostics and curves (CSV)",
        },
    )
    params = load_params()
    group = args.group
    if args.lora and args.selection is None:
        raise InputError("the LoRA strategies need the selection JSON of `select` (--selection)")
    selection = read_json(args.selection) if args.lora else None
    names = params.study.lora_strategies if args.lora else params.study.strategies
    strategies = expand(names, len(selection["random"]) if selection else 0)
    if not (args.source / "config.json").is_file():
        raise InputError(f"{args.source}: no source checkpoint; run `dvc repro source@{group.source.name}` first")

    device = pick_device()
    data = load_group_data(args.data, group, params, load_tokenizer(str(args.source)))
    with contextlib.ExitStack() as stack:  # the three folders appear together, complete, when every cell is done
        dirs = tuple(stack.enter_context(atomic_path(p, is_dir=True)) for p in (args.out, args.metrics, args.plots))
        stage = run_group(params, group, strategies, args.source, data, selection, device, dirs)
        write_json(dirs[1] / "stage.json", stage)
    logger.info(
        "%s: %d cells in %.0f s, %.0f train tokens/s",
        group.name,
        stage["cells"],
        stage["wall_seconds"],
        stage["tokens_per_second"] or 0,
    )


if __name__ == "__main__":
    run_main(main)
