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
from pathlib import Path

import numpy as np
import torch

from inflection_layers.artifacts import atomic_path, read_parquet, stage_args, write_json
from inflection_layers.config import Params, as_dict, load_params
from inflection_layers.errors import run_main
from inflection_layers.estimate import Tokens, stage_estimate
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, save_checkpoint, seed_everything
from inflection_layers.precision import resolve
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


def train_source(params: Params, regime: str, seed: int, data_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """Train one source model; returns (model, tokenizer, metrics)."""
    p, device = params.source, pick_device()
    train = read_parquet(data_dir / "sst2_source.parquet", ["text", "label"])
    dev = read_parquet(data_dir / "sst2_dev.parquet", ["text", "label"])

    seed_everything(seed)
    tokenizer = load_tokenizer(params.model.name)
    model = load_model(params.model.name).to(device)
    pad = tokenizer.pad_token_id
    ids = tokenize(tokenizer, train["text"], params.model.max_length)
    dev_ids = tokenize(tokenizer, dev["text"], params.model.max_length)
    labels = train["label"].tolist()
    precision = resolve(
        params.model.precision, device, params.model.name, probe_step(model, ids, labels, pad, p.batch_size, device)
    )
    seed_everything(seed)  # the probe (if any) must not change what follows
    tok = Tokens.of_ids({"sst2_source": ids, "sst2_dev": dev_ids})
    estimated = stage_estimate(params, model.config.to_dict(), tok, f"source@{regime}-{seed}", precision.name)
    epochs = p.epochs(regime)
    steps_per_epoch = -(-len(ids) // p.batch_size)
    optimizer = make_optimizer(model, p.lr, p.weight_decay)
    scheduler = make_scheduler(optimizer, p.schedule, epochs * steps_per_epoch, p.warmup_ratio)
    state: dict[str, torch.Tensor] = {}

    def compute_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**batch)
        state["confidence"] = torch.softmax(out.logits.detach().float(), -1).amax(-1).mean()
        return out.loss

    curve, tokens, step, t0 = [], 0, 0, time.perf_counter()
    model.train()
    for epoch in range(epochs):
        losses, confidences = [], []
        for idx in iterate(
            bucketed_batches([len(x) for x in ids], p.batch_size, seed, epoch),
            f"{regime}-{seed} epoch {epoch + 1}/{epochs}",
        ):
            batch = to_device(collate(ids, idx, pad, labels), device)
            losses.append(
                train_step(
                    compute_loss,
                    batch,
                    optimizer,
                    scheduler,
                    precision=precision,
                    max_grad_norm=p.max_grad_norm,
                    step=step,
                )
            )
            confidences.append(float(state["confidence"]))
            tokens += int(batch["attention_mask"].sum())
            step += 1
        if (epoch + 1) % p.dev_every and epoch + 1 != epochs:
            continue
        probs = predict(model, dev_ids, p.eval_batch_size, pad, device, precision)["probs"]
        acc, loss = accuracy_and_loss(probs, dev["label"].tolist())
        curve.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(np.mean(losses)),
                "train_confidence": float(np.mean(confidences)),
                "dev_accuracy": acc,
                "dev_loss": loss,
                "dev_confidence": float(probs.max(1).mean()),
            }
        )
        logger.info(
            "%s-%d epoch %d: train loss %.4f, SST-2 dev accuracy %.4f", regime, seed, epoch + 1, np.mean(losses), acc
        )
    wall = time.perf_counter() - t0
    last = curve[-1]
    metrics = {
        "regime": regime,
        "seed": seed,
        "epochs": epochs,
        "steps": step,
        "train_examples": len(ids),
        "dev_accuracy": last["dev_accuracy"],
        "dev_loss": last["dev_loss"],
        "dev_confidence": last["dev_confidence"],
        "train_loss": last["train_loss"],
        "train_confidence": last["train_confidence"],
        "wall_seconds": round(wall, 2),
        "estimated_seconds": estimated,
        "tokens_per_second": round(tokens / wall, 1),
        "device": device.type,
        **precision.record(),
        "curve": curve,
    }
    return model, tokenizer, metrics


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
