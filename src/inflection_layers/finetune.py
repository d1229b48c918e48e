"""Stages `finetune` and `finetune_lora`: adapt one source model to Rotten Tomatoes with every strategy of a group.

One stage = one source model (regime, seed); `finetune` runs `study.strategies`, `finetune_lora`
(flag --lora) runs `study.lora_strategies`, which also need the SKI band and the `lora.*` params.
One cell = (regime, strategy, seed): trains `finetune.steps` steps on RT train (the same batches in
the same order for every strategy of a seed), records diagnostics every `finetune.diag_every` steps,
then evaluates on `finetune.eval_splits` (RT validation, and test) and on their overlap-free parts
(sentences in neither SST-2 train nor dev). The cells run one after the other in one process,
which loads torch and tokenises the data once; each starts from the source checkpoint on disk.

Writes, per cell: <out>/<strategy>/predictions.parquet (id, split, label, prob_pos, pred,
overlap_free), the representations of the analysis sample (the evaluation splits in order, as in
predictions.parquet) at every hidden state, cls.npy ([CLS]) and mean.npy (mean over
tokens), each (L + 1, N, D) float16, and, for LoRA, the peft adapter; <metrics>/<strategy>.json;
<plots>/<strategy>-layers.csv and <strategy>-curve.csv. The `none` cell's representations are the
source model's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from inflection_layers.artifacts import atomic_path, read_json, read_parquet, write_csv, write_json
from inflection_layers.config import LORA_STRATEGIES, REGIMES, Params, load_params
from inflection_layers.diagnostics import measure, per_layer_means, tidy
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.strategies import apply_strategy, lora_layers, targeted_modules, trainable_parameters
from inflection_layers.training import autocast, check_finite, collate, endless_batches, make_optimizer, make_scheduler, predict, to_device, tokenize

logger = logging.getLogger(__name__)


def read_band(selection: Path | None) -> tuple[list[int], list[int]]:
    """(SKI band, random band) from the `select` stage's JSON, which the LoRA strategies need."""
    if selection is None:
        raise FileNotFoundError("the LoRA strategies need the selection JSON of `select` (--selection)")
    sel = read_json(selection)
    return sel["band"], sel["random_band"]


def train(model: torch.nn.Module, params: Params, ids: list[list[int]], labels: list[int], pad: int, seed: int, lora: bool, device: torch.device, desc: str) -> tuple[list[dict], list[dict]]:
    """The flat training loop -> (diagnostic records, sampled curve rows)."""
    p = params.finetune
    optimizer = make_optimizer(model, p.lr, p.weight_decay, lora_lr=params.lora.lr if lora else None)
    scheduler = make_scheduler(optimizer, "linear", p.steps, 0.0)
    batches = endless_batches([len(x) for x in ids], p.batch_size, seed)
    records, curve = [], []
    model.train()
    bar = tqdm(range(p.steps), desc=desc, disable=None)
    for step in bar:
        batch = to_device(collate(ids, next(batches), pad, labels), device)
        if step % p.diag_every == 0 or step == p.steps - 1:  # diagnostics need a backward through every layer
            with autocast(device):
                rec = measure(model, batch)
            records.append(rec)
            curve.append({"step": step, "loss": rec["loss"], "margin": rec["margin"], **{f"act_grad_{i - 1}": float(v) for i, v in enumerate(rec["act_grad"])}})
            loss_value = rec["loss"]
            check_finite(torch.tensor(loss_value), step)
        else:  # backward stops at the lowest trainable layer
            with autocast(device):
                loss = model(**batch).loss
            check_finite(loss, step)
            loss.backward()
            loss_value = loss.item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss_value:.4f}")
    return records, curve


@dataclass(frozen=True)
class Data:
    """One group's tokenised data: RT train (ids, labels) and the evaluation splits with their overlap-free flags."""

    train_ids: list[list[int]]
    train_labels: list[int]
    eval_frame: pd.DataFrame  # id, split, label, overlap_free (the analysis sample, in order)
    eval_ids: list[list[int]]
    pad: int


def load_data(data_dir: Path, splits: list[str], tokenizer: object, max_length: int) -> Data:
    """Read and tokenise RT train and the evaluation splits once for every cell of a group."""
    free = read_json(data_dir / "overlap_free.json")
    rt = read_parquet(data_dir / "rt_train.parquet", ["text", "label"])
    frames = []
    for split in splits:
        df = read_parquet(data_dir / f"{split}.parquet", ["id", "text", "label"]).assign(split=split)
        df["overlap_free"] = df["id"].isin(set(free[split]))
        frames.append(df)
    ev = pd.concat(frames, ignore_index=True)
    return Data(
        tokenize(tokenizer, rt["text"], max_length), rt["label"].tolist(),
        ev[["id", "split", "label", "overlap_free"]], tokenize(tokenizer, ev["text"], max_length), tokenizer.pad_token_id,
    )


def evaluate(model: torch.nn.Module, data: Data, batch_size: int, device: torch.device) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    """Predictions on the evaluation splits, representations per layer ({"cls", "mean"}: (L + 1, N, D)), accuracies and losses per split and overlap-free part."""
    frame = data.eval_frame.copy()
    out = predict(model, data.eval_ids, frame["label"].tolist(), batch_size, data.pad, device, return_reps=True)
    frame["prob_pos"], frame["pred"] = out["probs"][:, 1], out["probs"].argmax(1)
    frame = frame[["id", "split", "label", "prob_pos", "pred", "overlap_free"]]
    correct = frame["pred"] == frame["label"]
    nll = pd.Series(-np.log(np.clip(out["probs"][np.arange(len(frame)), frame["label"].to_numpy()], 1e-300, None)))
    metrics = {}
    for split, rows in frame.groupby("split", sort=False).groups.items():
        name, free = split.removeprefix("rt_"), rows[frame.loc[rows, "overlap_free"].to_numpy()]
        metrics |= {
            f"{name}_accuracy": float(correct[rows].mean()),
            f"{name}_loss": float(nll[rows].mean()),
            f"{name}_free_accuracy": float(correct[free].mean()),
            f"{name}_free_loss": float(nll[free].mean()),
            f"{name}_free_n": len(free),
        }
    return frame, {k: out[k] for k in ("cls", "mean")}, metrics


@dataclass(frozen=True)
class Group:
    """The source model and (temporary) output folders of one stage (regime, seed), and the SKI bands."""

    regime: str
    seed: int
    source: Path
    out: Path
    metrics: Path
    plots: Path
    band: tuple[int, ...] = ()
    random_band: tuple[int, ...] = ()


def run_cell(group: Group, strategy: str, params: Params, data: Data, device: torch.device) -> dict:
    """Adapt, evaluate and write one cell: <out>/<strategy>/, <metrics>/<strategy>.json, <plots>/<strategy>-*.csv; returns its metrics."""
    seed_everything(group.seed)
    model = load_model(str(group.source))
    L = model.config.num_hidden_layers
    is_lora = strategy in LORA_STRATEGIES
    layers = lora_layers(strategy, L, list(group.band), list(group.random_band)) if is_lora else []
    model = apply_strategy(model, strategy, shallow_k=params.finetune.shallow_k, lora=params.lora, layers=layers).to(device)
    trainable = trainable_parameters(model)
    cell = {"regime": group.regime, "strategy": strategy, "seed": group.seed}
    logger.info("%s: %d trainable parameters in %d tensors; LoRA layers %s", cell, sum(trainable.values()), len(trainable), layers)

    t0 = time.perf_counter()
    records, curve = [], []
    if strategy != "none":
        desc = f"{group.regime}-{strategy}-{group.seed}"
        records, curve = train(model, params, data.train_ids, data.train_labels, data.pad, group.seed, is_lora, device, desc)
    train_seconds = time.perf_counter() - t0
    predictions, reps, scores = evaluate(model, data, params.finetune.eval_batch_size, device)

    cell_dir = group.out / strategy
    cell_dir.mkdir()
    predictions.to_parquet(cell_dir / "predictions.parquet", index=False)
    for name, x in reps.items():
        np.save(cell_dir / f"{name}.npy", x)
    if is_lora:
        model.save_pretrained(cell_dir / "adapter", safe_serialization=True)
    metrics = {
        **cell,
        **scores,
        "trainable_parameters": sum(trainable.values()),
        "lora_layers": layers,
        "targeted_modules": targeted_modules(model),
        "steps": params.finetune.steps if strategy != "none" else 0,
        "train_seconds": round(train_seconds, 2),
        "final_loss": curve[-1]["loss"] if curve else None,
    }
    write_json(group.metrics / f"{strategy}.json", metrics)
    write_csv(group.plots / f"{strategy}-layers.csv", pd.DataFrame(tidy(per_layer_means(records, L), **cell) if records else [], columns=["layer", "metric", "value", *cell]))
    write_csv(group.plots / f"{strategy}-curve.csv", pd.DataFrame(curve).assign(**cell) if curve else pd.DataFrame(columns=["step", *cell]))
    logger.info("%s: validation %.4f (overlap-free %.4f)", cell, scores["validation_accuracy"], scores["validation_free_accuracy"])
    return metrics


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate params and inputs, run every cell of the group, write atomically."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=REGIMES, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--lora", action="store_true", help="run study.lora_strategies (needs --selection), else study.strategies")
    parser.add_argument("--source", type=Path, required=True, help="source checkpoint folder")
    parser.add_argument("--selection", type=Path, help="selection JSON from `select` (LoRA strategies)")
    parser.add_argument("--data", type=Path, required=True, help="folder of prepared splits")
    parser.add_argument("--out", type=Path, required=True, help="folder of cell folders: predictions, representations, adapter")
    parser.add_argument("--metrics", type=Path, required=True, help="folder of per-cell metrics JSONs")
    parser.add_argument("--plots", type=Path, required=True, help="folder of per-cell layer diagnostics and curves (CSV)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    strategies = params.study.lora_strategies if args.lora else params.study.strategies
    band, random_band = read_band(args.selection) if args.lora else ([], [])
    if not (args.source / "config.json").is_file():
        raise FileNotFoundError(f"{args.source}: no source checkpoint; run `dvc repro source` first")

    device = pick_device()
    data = load_data(args.data, params.finetune.eval_splits, load_tokenizer(str(args.source)), params.model.max_length)
    with contextlib.ExitStack() as stack:  # the three folders appear together, complete, when every cell is done
        out, metrics, plots = (stack.enter_context(atomic_path(p, is_dir=True)) for p in (args.out, args.metrics, args.plots))
        group = Group(args.regime, args.seed, args.source, out, metrics, plots, tuple(band), tuple(random_band))
        for strategy in strategies:
            run_cell(group, strategy, params, data, device)


if __name__ == "__main__":
    main()
