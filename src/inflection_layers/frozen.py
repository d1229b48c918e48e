"""The two cells that leave the encoder frozen: `none` (the source model as it is) and `head` (a new head only).

Both come from one pass of the frozen encoder: its evaluation outputs give `none`'s predictions and the
head's test inputs, and its outputs on the stream's training examples are the head's features, so the
head trains `finetune.steps` steps on cached features instead of re-running the encoder.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inflection_layers.adapt import GroupData, diagnostic_steps
from inflection_layers.archs import arch
from inflection_layers.config import Params
from inflection_layers.modeling import seed_everything
from inflection_layers.precision import Precision
from inflection_layers.strategies import apply_strategy, trainable_parameters
from inflection_layers.training import make_optimizer, make_scheduler, predict, train_step


def stream_features(
    model: nn.Module, params: Params, data: GroupData, device: torch.device, precision: Precision
) -> torch.Tensor:
    """The frozen encoder's head inputs of the training examples the stream uses -> (N_train, 1, D), zeros elsewhere."""
    used = np.unique(np.concatenate(data.stream))
    feats = torch.zeros((len(data.train_ids), 1, model.config.hidden_size))
    part = [data.train_ids[i] for i in used]
    out = predict(model, part, params.finetune.eval_batch_size, data.pad, device, precision, head_input=True)
    feats[used] = torch.from_numpy(out["head_input"])
    return feats


def train_head(
    model: nn.Module, feats: torch.Tensor, params: Params, data: GroupData, device: torch.device, precision: Precision
) -> list[dict]:
    """`finetune.steps` steps of the head alone on cached features (N_train, 1, D); returns the loss curve."""
    p, head_forward = params.finetune, arch(model).head_forward
    apply_strategy(model, "head", shallow_k=p.shallow_k)
    optimizer = make_optimizer(model, params.lr("head"), p.weight_decay)
    scheduler = make_scheduler(optimizer, p.schedule, p.steps, p.warmup_ratio)
    labels, curve, logged = torch.tensor(data.train_labels), [], diagnostic_steps(p.steps, p.diag_every)
    model.train()
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
        if step in logged:
            curve.append({"step": step, "loss": loss})
    model.eval()
    return curve


def frozen_cells(
    model: nn.Module,
    strategies: list[str],
    params: Params,
    data: GroupData,
    device: torch.device,
    precision: Precision,
    keep_reps: bool,
    seed: int,
) -> dict[str, dict]:
    """`none` and `head` from one pass of the frozen encoder over the evaluation sentences and the stream's examples.

    Returns per strategy: probs (N, C), reps (or None), curve, tokens, seconds, trainable (name -> size).
    """
    p = params.finetune
    ev = predict(model, data.eval_ids, p.eval_batch_size, data.pad, device, precision, reps=keep_reps, head_input=True)
    reps = {k: ev[k] for k in ("cls", "mean")} if keep_reps else None
    out = {"none": {"probs": ev["probs"], "reps": reps, "curve": [], "tokens": 0, "seconds": 0.0, "trainable": {}}}
    if "head" not in strategies:
        return out
    t0 = time.perf_counter()
    feats = stream_features(model, params, data, device, precision)
    seed_everything(seed)
    curve = train_head(model, feats, params, data, device, precision)
    with torch.no_grad(), precision.autocast():
        logits = arch(model).head_forward(model, torch.from_numpy(ev["head_input"]).to(device)).double()
    out["head"] = {
        "probs": torch.softmax(logits, -1).cpu().numpy(),
        "reps": None,
        "curve": curve,
        "tokens": int(sum(len(data.train_ids[i]) for b in data.stream for i in b)),
        "seconds": time.perf_counter() - t0,
        "trainable": trainable_parameters(model),
    }
    return out
