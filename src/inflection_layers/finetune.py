"""Stages `finetune` and `finetune_lora`: adapt one source model to Rotten Tomatoes with one strategy.

One cell = (regime, strategy, seed). Trains `finetune.steps` steps on RT train (the same batches in the
same order for every strategy of a seed), records diagnostics every `finetune.diag_every` steps, then
evaluates on RT validation and test and on their overlap-free parts (sentences in neither SST-2 train
nor dev). Writes to <out>: predictions.parquet (id, split, label, prob_pos, pred, overlap_free),
the representations of the analysis sample (RT validation then test, in predictions.parquet's
order) at every hidden state, cls.npy ([CLS]) and mean.npy (mean over tokens), each (L + 1, N, D)
float16, and, for LoRA, the peft adapter. The `none` cell's representations are the source model's.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from inflection_layers.artifacts import atomic_path, read_parquet, write_csv, write_json
from inflection_layers.config import LORA_STRATEGIES, REGIMES, STRATEGIES, Params, load_params
from inflection_layers.diagnostics import measure, per_layer_means, tidy
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.strategies import apply_strategy, lora_layers, targeted_modules, trainable_parameters
from inflection_layers.training import check_finite, collate, endless_batches, make_optimizer, make_scheduler, predict, to_device, tokenize

logger = logging.getLogger(__name__)
EVAL_SPLITS = ("rt_validation", "rt_test")


def read_band(selection: Path | None, strategy: str) -> tuple[list[int], list[int]]:
    """(SKI band, random band) from the `select` stage's JSON; LoRA strategies need it."""
    if strategy not in LORA_STRATEGIES or strategy == "lora_all":
        return [], []
    if selection is None or not selection.is_file():
        raise FileNotFoundError(f"{strategy} needs the selection JSON (--selection), got {selection}")
    sel = json.loads(selection.read_text())
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
            rec = measure(model, batch)
            records.append(rec)
            curve.append({"step": step, "loss": rec["loss"], "margin": rec["margin"], **{f"act_grad_{i - 1}": float(v) for i, v in enumerate(rec["act_grad"])}})
            loss_value = rec["loss"]
            check_finite(torch.tensor(loss_value), step)
        else:  # backward stops at the lowest trainable layer
            loss = model(**batch).loss
            check_finite(loss, step)
            loss.backward()
            loss_value = loss.item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss_value:.4f}")
    return records, curve


def evaluate(model: torch.nn.Module, tokenizer: object, data_dir: Path, params: Params, device: torch.device) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    """Predictions on RT validation and test, representations per layer ({"cls", "mean"}: (L + 1, N, D)), the four accuracies (+ losses)."""
    free = json.loads((data_dir / "overlap_free.json").read_text())
    frames, reps, metrics = [], {"cls": [], "mean": []}, {}
    for split in EVAL_SPLITS:
        df = read_parquet(data_dir / f"{split}.parquet", ["id", "text", "label"])
        out = predict(model, tokenize(tokenizer, df["text"], params.model.max_length), df["label"].tolist(), params.finetune.eval_batch_size, tokenizer.pad_token_id, device, return_reps=True)
        frame = pd.DataFrame({"id": df["id"], "split": split, "label": df["label"], "prob_pos": out["probs"][:, 1], "pred": out["probs"].argmax(1)})
        frame["overlap_free"] = frame["id"].isin(set(free[split]))
        name = split.removeprefix("rt_")
        correct = frame["pred"] == frame["label"]
        nll = -np.log(np.clip(np.where(frame["label"] == 1, frame["prob_pos"], 1 - frame["prob_pos"]), 1e-300, None))
        metrics[f"{name}_accuracy"] = float(correct.mean())
        metrics[f"{name}_loss"] = float(nll.mean())
        metrics[f"{name}_free_accuracy"] = float(correct[frame["overlap_free"]].mean())
        metrics[f"{name}_free_loss"] = float(nll[frame["overlap_free"]].mean())
        metrics[f"{name}_free_n"] = int(frame["overlap_free"].sum())
        frames.append(frame)
        for name in reps:
            reps[name].append(out[name])
    return pd.concat(frames, ignore_index=True), {k: np.concatenate(v, axis=1) for k, v in reps.items()}, metrics


def main() -> None:
    """Parse the cell and paths dvc.yaml gives, validate params, train, evaluate, write atomically."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=REGIMES, required=True)
    parser.add_argument("--strategy", required=True, help=f"one of {list(STRATEGIES)}")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--source", type=Path, required=True, help="source checkpoint folder")
    parser.add_argument("--selection", type=Path, help="selection JSON from `select` (LoRA strategies)")
    parser.add_argument("--data", type=Path, required=True, help="folder of prepared splits")
    parser.add_argument("--out", type=Path, required=True, help="cell folder: predictions, [CLS] representations, adapter")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON of this cell")
    parser.add_argument("--layers", type=Path, required=True, help="tidy per-layer diagnostics (means over steps)")
    parser.add_argument("--curve", type=Path, required=True, help="sampled diagnostics curve over steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.strategy not in STRATEGIES:
        parser.error(f"unknown strategy {args.strategy!r}; allowed: {list(STRATEGIES)}")
    params = load_params()
    band, random_band = read_band(args.selection, args.strategy)

    device = pick_device()
    seed_everything(args.seed)
    tokenizer = load_tokenizer(str(args.source))
    model = load_model(str(args.source))
    L = model.config.num_hidden_layers
    layers = lora_layers(args.strategy, L, band, random_band) if args.strategy in LORA_STRATEGIES else []
    model = apply_strategy(model, args.strategy, shallow_k=params.finetune.shallow_k, lora=params.lora, layers=layers).to(device)
    trainable = trainable_parameters(model)
    cell = {"regime": args.regime, "strategy": args.strategy, "seed": args.seed}
    logger.info("%s: %d trainable parameters in %d tensors; LoRA layers %s", cell, sum(trainable.values()), len(trainable), layers)

    rt = read_parquet(args.data / "rt_train.parquet", ["text", "label"])
    ids = tokenize(tokenizer, rt["text"], params.model.max_length)
    t0 = time.perf_counter()
    records, curve = [], []
    if args.strategy != "none":
        desc = f"{args.regime}-{args.strategy}-{args.seed}"
        records, curve = train(model, params, ids, rt["label"].tolist(), tokenizer.pad_token_id, args.seed, args.strategy in LORA_STRATEGIES, device, desc)
    train_seconds = time.perf_counter() - t0
    predictions, reps, scores = evaluate(model, tokenizer, args.data, params, device)

    with atomic_path(args.out, is_dir=True) as tmp:
        predictions.to_parquet(tmp / "predictions.parquet", index=False)
        for name, x in reps.items():
            np.save(tmp / f"{name}.npy", x)
        if args.strategy in LORA_STRATEGIES:
            model.save_pretrained(tmp / "adapter", safe_serialization=True)
    metrics = {
        **cell,
        **scores,
        "trainable_parameters": sum(trainable.values()),
        "lora_layers": layers,
        "targeted_modules": targeted_modules(model),
        "steps": params.finetune.steps if args.strategy != "none" else 0,
        "train_seconds": round(train_seconds, 2),
        "final_loss": curve[-1]["loss"] if curve else None,
    }
    write_json(args.metrics, metrics)
    write_csv(args.layers, pd.DataFrame(tidy(per_layer_means(records, L), **cell) if records else [], columns=["layer", "metric", "value", *cell]))
    write_csv(args.curve, pd.DataFrame(curve).assign(**cell) if curve else pd.DataFrame(columns=["step", *cell]))
    logger.info("%s: validation %.4f (overlap-free %.4f), test %.4f (overlap-free %.4f)", cell, scores["validation_accuracy"], scores["validation_free_accuracy"], scores["test_accuracy"], scores["test_free_accuracy"])


if __name__ == "__main__":
    main()
