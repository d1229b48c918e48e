"""What the `source` and `finetune` stages share: tokenising, length-bucketed batches, the optimiser, evaluation.

Batches are padded only to their own longest sequence (dynamic padding) and built from examples of
similar length (bucketing), so little compute goes to padding. The order is a pure function of the
seed and epoch, so every strategy of one seed sees the same batches (a paired design).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

logger = logging.getLogger(__name__)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to `max_length`, unpadded."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket: int = 50) -> list[np.ndarray]:
    """Shuffled batches of example indices, each drawn from a pool of similar lengths.

    Shuffle all indices with (seed, epoch); sort each run of `bucket * batch_size` by length; cut into
    batches; shuffle the batch order. Deterministic in (seed, epoch); every index appears once.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    out = []
    pool = bucket * batch_size
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def collate(ids: Sequence[Sequence[int]], idx: Iterable[int], pad_id: int, labels: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Pad the examples `idx` to their longest: input_ids, attention_mask (B, T) and labels (B,)."""
    idx = list(idx)
    T = max(len(ids[i]) for i in idx)
    input_ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    for row, i in enumerate(idx):
        input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
        mask[row, : len(ids[i])] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=torch.long)
    return batch


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move every tensor of a batch to `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights (1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: nothing to optimise")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear-decay or constant schedule after `warmup_ratio * total_steps` warm-up steps."""
    warmup = int(round(warmup_ratio * total_steps))
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"unknown schedule {schedule!r}; allowed: ['linear', 'constant']")


def check_finite(loss: Tensor, step: int) -> None:
    """Stop with an error naming the step when the loss is NaN or infinite."""
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}: training diverged; lower the learning rate")


@torch.no_grad()
def predict(model: nn.Module, ids: Sequence[Sequence[int]], labels: Sequence[int], batch_size: int, pad_id: int, device: torch.device) -> dict:
    """Evaluate in length-sorted batches -> probs (N, C) float64 in input order, loss (mean NLL), accuracy."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    probs = np.zeros((len(ids), model.config.num_labels))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = model(**to_device(collate(ids, idx, pad_id), device)).logits  # (B, C)
        probs[idx] = torch.softmax(logits.double(), -1).cpu().numpy()
    model.train(was_training)
    y = np.asarray(labels)
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))
    return {"probs": probs, "loss": float(nll.mean()), "accuracy": float((probs.argmax(1) == y).mean())}
