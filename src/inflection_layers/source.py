"""Stage `source`: full fine-tuning on SST-2 -> the UNDER (1 epoch) or OVER (8 epochs) source model of one seed.

Reads <data>/sst2_source.parquet (train), sst2_dev.parquet (accuracy after every epoch) and
rt_validation.parquet (mean max-softmax confidence, a saturation proxy). Writes the checkpoint
(safetensors, config, tokenizer, resolved params) to <out> and the cell's metrics to <metrics>.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inflection_layers.artifacts import atomic_path, read_parquet, write_json
from inflection_layers.config import REGIMES, Params, as_dict, load_params
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, save_checkpoint, seed_everything
from inflection_layers.training import (
    autocast,
    bucketed_batches,
    check_finite,
    collate,
    make_optimizer,
    make_scheduler,
    predict,
    to_device,
    tokenize,
)

logger = logging.getLogger(__name__)


def train_source(params: Params, regime: str, seed: int, data_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """Train one source model; returns (model, tokenizer, metrics)."""
    p, device = params.source, pick_device()
    train = read_parquet(data_dir / "sst2_source.parquet", ["text", "label"])
    dev = read_parquet(data_dir / "sst2_dev.parquet", ["text", "label"])
    rt_val = read_parquet(data_dir / "rt_validation.parquet", ["text", "label"])

    seed_everything(seed)
    tokenizer = load_tokenizer(params.model.name)
    model = load_model(params.model.name).to(device)
    pad = tokenizer.pad_token_id
    ids = tokenize(tokenizer, train["text"], params.model.max_length)
    dev_ids = tokenize(tokenizer, dev["text"], params.model.max_length)
    labels = train["label"].tolist()
    epochs = p.epochs(regime)
    steps_per_epoch = -(-len(ids) // p.batch_size)
    optimizer = make_optimizer(model, p.lr, p.weight_decay)
    scheduler = make_scheduler(optimizer, p.schedule, epochs * steps_per_epoch, p.warmup_ratio)

    curve, tokens, step, t0 = [], 0, 0, time.perf_counter()
    model.train()
    for epoch in range(epochs):
        bar = tqdm(bucketed_batches([len(x) for x in ids], p.batch_size, seed, epoch), desc=f"{regime}-{seed} epoch {epoch + 1}/{epochs}", disable=None)
        for idx in bar:
            batch = to_device(collate(ids, idx, pad, labels), device)
            with autocast(device):
                loss = model(**batch).loss
            check_finite(loss, step)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (epoch + 1) % p.dev_every and epoch + 1 != epochs:
            continue
        ev = predict(model, dev_ids, dev["label"].tolist(), p.eval_batch_size, pad, device)
        curve.append({"epoch": epoch + 1, "step": step, "dev_accuracy": ev["accuracy"], "dev_loss": ev["loss"]})
        logger.info("%s-%d epoch %d: SST-2 dev accuracy %.4f, loss %.4f", regime, seed, epoch + 1, ev["accuracy"], ev["loss"])
    train_seconds = time.perf_counter() - t0

    rt = predict(model, tokenize(tokenizer, rt_val["text"], params.model.max_length), rt_val["label"].tolist(), p.eval_batch_size, pad, device)
    metrics = {
        "regime": regime,
        "seed": seed,
        "epochs": epochs,
        "steps": step,
        "train_examples": len(ids),
        "dev_accuracy": curve[-1]["dev_accuracy"],
        "dev_loss": curve[-1]["dev_loss"],
        "rt_validation_confidence": float(np.max(rt["probs"], 1).mean()),
        "rt_validation_accuracy": rt["accuracy"],
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens / train_seconds, 1),
        "device": device.type,
        "curve": curve,
    }
    return model, tokenizer, metrics


def main() -> None:
    """Parse the cell and paths dvc.yaml gives, validate params, train, save atomically."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=REGIMES, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder of prepared splits")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON of this cell")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()

    model, tokenizer, metrics = train_source(params, args.regime, args.seed, args.data)
    resolved = {"regime": args.regime, "seed": args.seed, "model": as_dict(params.model), "source": as_dict(params.source), "data": as_dict(params.data)}
    with atomic_path(args.out, is_dir=True) as tmp:
        save_checkpoint(model, tokenizer, tmp, resolved)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
