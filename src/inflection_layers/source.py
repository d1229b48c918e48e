"""Stage `source`: full fine-tuning on SST-2 -> the UNDER (`source.epochs_under`) or OVER
(`source.epochs_over`) source model of one seed.

Reads <data>/sst2_source.parquet (train) and sst2_dev.parquet. After every `source.dev_every`
epochs (and the last) it records the curve that shows whether the model is over-trained: mean
training loss and mean max-softmax confidence over the epoch's batches, and SST-2 dev accuracy,
loss and confidence. Writes the checkpoint (safetensors, config, tokenizer, resolved params) to
<out> and the metrics (with the curve, wall time, tokens/s and precision) to <metrics>.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inflection_layers.artifacts import atomic_path, read_parquet, stage_args, write_json
from inflection_layers.config import Params, as_dict, load_params
from inflection_layers.errors import run_main
from inflection_layers.estimate import Tokens, stage_estimate
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, save_checkpoint, seed_everything
from inflection_layers.precision import Precision, resolve
from inflection_layers.training import (
    accuracy_and_loss,
    bucketed_batches,
    collate,
    iterate,
    make_optimizer,
    make_scheduler,
    predict,
    probe_step,
    to_device,
    tokenize,
    train_step,
)

logger = logging.getLogger(__name__)


@dataclass
class SourceRun:
    """What one source model's training loop needs: the model, its optimiser and the tokenised SST-2."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    ids: list[list[int]]
    labels: list[int]
    pad: int
    device: torch.device
    step: int = 0
    tokens: int = 0


def train_epoch(run: SourceRun, p: Any, seed: int, epoch: int, desc: str) -> dict[str, float]:
    """One epoch over bucketed batches -> mean training loss and mean max-softmax confidence."""
    state: dict[str, torch.Tensor] = {}

    def compute_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = run.model(**batch)
        state["confidence"] = torch.softmax(out.logits.detach().float(), -1).amax(-1).mean()
        return out.loss

    losses, confidences = [], []
    for idx in iterate(bucketed_batches([len(x) for x in run.ids], p.batch_size, seed, epoch), desc):
        batch = to_device(collate(run.ids, idx, run.pad, run.labels), run.device)
        step_args = {"precision": run.precision, "max_grad_norm": p.max_grad_norm, "step": run.step}
        losses.append(train_step(compute_loss, batch, run.optimizer, run.scheduler, **step_args))
        confidences.append(float(state["confidence"]))
        run.tokens += int(batch["attention_mask"].sum())
        run.step += 1
    return {"train_loss": float(np.mean(losses)), "train_confidence": float(np.mean(confidences))}


def dev_point(run: SourceRun, dev_ids: list[list[int]], dev_labels: list[int], batch_size: int) -> dict[str, float]:
    """SST-2 dev accuracy, loss and mean max-softmax confidence of the model as it is now."""
    probs = predict(run.model, dev_ids, batch_size, run.pad, run.device, run.precision)["probs"]
    acc, loss = accuracy_and_loss(probs, dev_labels)
    return {"dev_accuracy": acc, "dev_loss": loss, "dev_confidence": float(probs.max(1).mean())}


def start_run(params: Params, seed: int, ids: list[list[int]], labels: list[int], pad: int) -> SourceRun:
    """Load the pre-trained model, pick the precision (measured where `auto`) and build the optimiser."""
    p, device = params.source, pick_device()
    seed_everything(seed)
    model = load_model(params.model.name).to(device)
    probe = probe_step(model, ids, labels, pad, p.batch_size, device)
    precision = resolve(params.model.precision, device, params.model.name, probe)
    seed_everything(seed)  # the probe (if any) must not change what follows
    optimizer = make_optimizer(model, p.lr, p.weight_decay)
    return SourceRun(model, optimizer, None, precision, ids, labels, pad, device)


def train_source(params: Params, regime: str, seed: int, data_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """Train one source model; returns (model, tokenizer, metrics)."""
    p = params.source
    train = read_parquet(data_dir / "sst2_source.parquet", ["text", "label"])
    dev = read_parquet(data_dir / "sst2_dev.parquet", ["text", "label"])
    tokenizer = load_tokenizer(params.model.name)
    ids, dev_ids = (tokenize(tokenizer, f["text"], params.model.max_length) for f in (train, dev))
    run = start_run(params, seed, ids, train["label"].tolist(), tokenizer.pad_token_id)
    tok = Tokens.of_ids({"sst2_source": ids, "sst2_dev": dev_ids})
    estimated = stage_estimate(params, run.model.config.to_dict(), tok, f"source@{regime}-{seed}", run.precision.name)
    epochs = p.epochs(regime)
    run.scheduler = make_scheduler(run.optimizer, p.schedule, epochs * -(-len(ids) // p.batch_size), p.warmup_ratio)

    curve, t0 = [], time.perf_counter()
    run.model.train()
    for epoch in range(epochs):
        point = train_epoch(run, p, seed, epoch, f"{regime}-{seed} epoch {epoch + 1}/{epochs}")
        if (epoch + 1) % p.dev_every and epoch + 1 != epochs:
            continue
        point = {
            "epoch": epoch + 1,
            "step": run.step,
            **point,
            **dev_point(run, dev_ids, dev["label"].tolist(), p.eval_batch_size),
        }
        curve.append(point)
        logger.info(
            "%s-%d epoch %d: train loss %.4f, SST-2 dev accuracy %.4f",
            regime,
            seed,
            epoch + 1,
            point["train_loss"],
            point["dev_accuracy"],
        )
    wall = time.perf_counter() - t0
    metrics = {
        "regime": regime,
        "seed": seed,
        "epochs": epochs,
        "steps": run.step,
        "train_examples": len(ids),
        **{k: curve[-1][k] for k in ("dev_accuracy", "dev_loss", "dev_confidence", "train_loss", "train_confidence")},
        "wall_seconds": round(wall, 2),
        "estimated_seconds": estimated,
        "tokens_per_second": round(run.tokens / wall, 1),
        "device": run.device.type,
        **run.precision.record(),
        "curve": curve,
    }
    return run.model, tokenizer, metrics


def main() -> None:
    """Parse the cell and paths dvc.yaml gives, validate params, train, save atomically."""
    args = stage_args(
        __doc__,
        {
            "regime": "regime",
            "seed": "seed",
            "data": "folder of prepared splits",
            "out": "checkpoint folder",
            "metrics": "metrics JSON of this source model",
        },
    )
    params = load_params()

    model, tokenizer, metrics = train_source(params, args.regime, args.seed, args.data)
    resolved = {
        "regime": args.regime,
        "seed": args.seed,
        "model": as_dict(params.model),
        "source": as_dict(params.source),
        "data": as_dict(params.data),
    }
    with atomic_path(args.out, is_dir=True) as tmp:
        save_checkpoint(model, tokenizer, tmp, resolved)
    write_json(args.metrics, metrics)
    logger.info(
        "%s-%d: SST-2 dev accuracy %.4f, train loss %.4f, %.0f s",
        args.regime,
        args.seed,
        metrics["dev_accuracy"],
        metrics["train_loss"],
        metrics["wall_seconds"],
    )


if __name__ == "__main__":
    run_main(main)
