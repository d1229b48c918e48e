"""Adaptation of one group's cells, shared by the `finetune` stages and the learning-rate sweep: the group's
tokenised data and batch stream, the flat training loop of a cell, the frozen-encoder cells, and scoring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from inflection_layers.archs import arch
from inflection_layers.artifacts import read_parquet
from inflection_layers.cells import Group
from inflection_layers.config import Params
from inflection_layers.diagnostics import measure
from inflection_layers.modeling import seed_everything
from inflection_layers.precision import Precision
from inflection_layers.strategies import apply_strategy, trainable_parameters
from inflection_layers.training import (
    accuracy_and_loss,
    batch_stream,
    collate,
    iterate,
    make_optimizer,
    make_scheduler,
    predict,
    to_device,
    tokenize,
    train_step,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupData:
    """One group's tokenised data: the train split, its batch stream, and the evaluation splits (the analysis sample)."""

    train_ids: list[list[int]]
    train_labels: list[int]
    stream: list[np.ndarray]  # (steps,) batches of train indices, the same for every strategy
    eval_frame: pd.DataFrame  # id, split, label
    eval_ids: list[list[int]]
    pad: int


def load_group_data(data_dir: Path, group: Group, params: Params, tokenizer: object) -> GroupData:
    """Read and tokenise the target's train split and evaluation splits once for every cell of a group."""
    p = params.finetune
    train = read_parquet(data_dir / f"{group.target}_train.parquet", ["text", "label"])
    frames = [
        read_parquet(data_dir / f"{group.target}_{split}.parquet", ["id", "text", "label"]).assign(split=split)
        for split in p.eval_splits
    ]
    ev = pd.concat(frames, ignore_index=True)
    ids = tokenize(tokenizer, train["text"], params.model.max_length)
    return GroupData(
        ids,
        train["label"].tolist(),
        batch_stream([len(x) for x in ids], p.batch_size, group.seed, p.steps),
        ev[["id", "split", "label"]],
        tokenize(tokenizer, ev["text"], params.model.max_length),
        tokenizer.pad_token_id,
    )


def score(frame: pd.DataFrame, probs: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Predictions (id, split, label, prob_pos, pred) and accuracy, loss and size per evaluation split."""
    pred = frame.assign(prob_pos=probs[:, 1], pred=probs.argmax(1))
    scores = {}
    for split, rows in pred.groupby("split", sort=False).groups.items():
        acc, loss = accuracy_and_loss(probs[rows], pred.loc[rows, "label"].tolist())
        scores |= {f"{split}_accuracy": acc, f"{split}_loss": loss, f"{split}_n": len(rows)}
    return pred, scores


def diagnostic_steps(steps: int, every: int) -> set[int]:
    """The steps whose batch is also measured: 0, every `every`, and the last."""
    return set(range(0, steps, every)) | {steps - 1}


def train_cell(
    model: torch.nn.Module,
    params: Params,
    data: GroupData,
    device: torch.device,
    precision: Precision,
    lr: float,
    desc: str,
    diagnose: bool = True,
) -> tuple[list[dict], list[dict], int]:
    """The flat training loop of an encoder-training cell -> (diagnostic records, curve rows, real tokens)."""
    p = params.finetune
    optimizer = make_optimizer(model, lr, p.weight_decay)
    scheduler = make_scheduler(optimizer, p.schedule, p.steps, p.warmup_ratio)
    diag = diagnostic_steps(p.steps, p.diag_every) if diagnose else set()
    records, curve, tokens = [], [], 0
    model.train()
    for step, idx in enumerate(iterate(data.stream, desc)):
        batch = to_device(collate(data.train_ids, idx, data.pad, data.train_labels), device)
        if step in diag:  # eval mode, eager attention, no update: dropout-free diagnostics of the current model
            rec = measure(model, batch)
            optimizer.zero_grad(set_to_none=True)
            records.append(rec)
            curve.append(
                {"step": step, "loss": rec["loss"], "margin": rec["margin"]}
                | {f"act_grad_{i - 1}": float(v) for i, v in enumerate(rec["act_grad"])}
            )
        train_step(
            lambda b: model(**b).loss,
            batch,
            optimizer,
            scheduler,
            precision=precision,
            max_grad_norm=p.max_grad_norm,
            step=step,
        )
        tokens += int(batch["attention_mask"].sum())
    return records, curve, tokens


def frozen_cells(
    model: torch.nn.Module,
    strategies: list[str],
    params: Params,
    data: GroupData,
    device: torch.device,
    precision: Precision,
    keep_reps: bool,
    seed: int,
) -> dict[str, dict]:
    """`none` and `head` from one pass of the frozen encoder: the evaluation sentences and the train examples the stream uses.

    Returns per strategy: probs (N, C), reps (or None), curve, tokens, seconds, trainable (name -> size).
    """
    p, head_forward = params.finetune, arch(model).head_forward
    ev = predict(model, data.eval_ids, p.eval_batch_size, data.pad, device, precision, reps=keep_reps, head_input=True)
    out = {
        "none": {
            "probs": ev["probs"],
            "reps": {k: ev[k] for k in ("cls", "mean")} if keep_reps else None,
            "curve": [],
            "tokens": 0,
            "seconds": 0.0,
            "trainable": {},
        }
    }
    if "head" not in strategies:
        return out
    t0 = time.perf_counter()
    used = np.unique(np.concatenate(data.stream))
    feats = torch.zeros((len(data.train_ids), 1, model.config.hidden_size))
    feats[used] = torch.from_numpy(
        predict(
            model, [data.train_ids[i] for i in used], p.eval_batch_size, data.pad, device, precision, head_input=True
        )["head_input"]
    )
    seed_everything(seed)
    apply_strategy(model, "head", shallow_k=p.shallow_k)
    optimizer = make_optimizer(model, params.lr("head"), p.weight_decay)
    scheduler = make_scheduler(optimizer, p.schedule, p.steps, p.warmup_ratio)
    labels = torch.tensor(data.train_labels)
    model.train()
    curve = []
    for step, idx in enumerate(data.stream):
        batch = {"features": feats[idx].to(device), "labels": labels[idx].to(device)}
        loss = train_step(
            lambda b: F.cross_entropy(head_forward(model, b["features"]), b["labels"]),
            batch,
            optimizer,
            scheduler,
            precision=precision,
            max_grad_norm=p.max_grad_norm,
            step=step,
        )
        if step in diagnostic_steps(p.steps, p.diag_every):
            curve.append({"step": step, "loss": loss})
    model.eval()
    with torch.no_grad(), precision.autocast():
        logits = head_forward(model, torch.from_numpy(ev["head_input"]).to(device)).double()
    out["head"] = {
        "probs": torch.softmax(logits, -1).cpu().numpy(),
        "reps": None,
        "curve": curve,
        "tokens": int(sum(len(data.train_ids[i]) for b in data.stream for i in b)),
        "seconds": time.perf_counter() - t0,
        "trainable": trainable_parameters(model),
    }
    return out
