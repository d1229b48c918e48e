"""The engine the `source` and `finetune` stages (and the benchmark) share: batches, the optimiser,
one training step, and evaluation.

Batches are padded only to their own longest sequence (dynamic padding) and built from examples of
similar length (bucketing), so little compute goes to padding. Their order is a pure function of the
seed and epoch, so every strategy of one seed sees the same batches (a paired design).
:func:`train_step` is the only place where an optimisation step happens: precision, loss, the
non-finite check, clipping, optimiser and scheduler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from inflection_layers.config import Diagnose
from inflection_layers.precision import Precision

logger = logging.getLogger(__name__)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to `max_length`, unpadded."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket: int = 50
) -> list[np.ndarray]:
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


def batch_stream(lengths: Sequence[int], batch_size: int, seed: int, steps: int) -> list[np.ndarray]:
    """The first `steps` batches of `bucketed_batches`, epoch after epoch: a step-based loop's batches for one seed."""
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        out += bucketed_batches(lengths, batch_size, seed, epoch)
        epoch += 1
    return out[:steps]


def collate(
    ids: Sequence[Sequence[int]], idx: Iterable[int], pad_id: int, labels: Sequence[int] | None = None
) -> dict[str, Tensor]:
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


def measurement_batches(
    tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame, max_length: int, p: Diagnose, seed: int
) -> list[dict[str, Tensor]]:
    """The `diagnose.batches` measurement batches of a frame (text, label) for a seed: the first batches of epoch 0
    of :func:`bucketed_batches`, so the UNDER and OVER models of a seed, and every intervention, see the same ones."""
    ids = tokenize(tokenizer, frame["text"], max_length)
    labels = frame["label"].tolist()
    order = bucketed_batches([len(x) for x in ids], p.batch_size, seed, epoch=0)[: p.batches]
    return [collate(ids, idx, tokenizer.pad_token_id, labels) for idx in order]


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move every tensor of a batch to `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights (1-D)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: nothing to optimise")
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    fused = named[0][1].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear-decay or constant schedule after `warmup_ratio * total_steps` warm-up steps."""
    warmup = round(warmup_ratio * total_steps)
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"unknown schedule {schedule!r}; allowed: ['linear', 'constant']")


def check_finite(loss: float, step: int) -> None:
    """Stop with an error naming the step when the loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}: training diverged; lower the learning rate")


def train_step(
    compute_loss: Callable[[dict[str, Tensor]], Tensor],
    batch: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    precision: Precision,
    max_grad_norm: float | None,
    step: int,
) -> float:
    """One optimisation step: loss under the precision's autocast, non-finite check, backward,
    clipping of the trainable parameters' gradient norm, optimiser and scheduler. Returns the loss.

    compute_loss(batch) -> scalar loss; for a transformers model, ``lambda b: model(**b).loss``.
    """
    with precision.autocast():
        loss = compute_loss(batch)
    value = loss.item()
    check_finite(value, step)
    loss.backward()
    update(optimizer, scheduler, max_grad_norm)
    return value


def update(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float | None
) -> None:
    """After a backward: clip the optimizer's parameters' gradient norm, step optimizer and scheduler, zero grads."""
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def eval_batches(
    ids: Sequence[Sequence[int]], batch_size: int, pad_id: int, device: torch.device
) -> Iterator[tuple[np.ndarray, dict]]:
    """(indices, collated batch) of evaluation in length-sorted order (little padding); indices into `ids`."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, to_device(collate(ids, idx, pad_id), device)


@torch.no_grad()
def predict(
    model: nn.Module,
    ids: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    precision: Precision,
    *,
    reps: bool = False,
    head_input: bool = False,
) -> dict[str, np.ndarray]:
    """Evaluate in length-sorted batches, in eval mode.

    Returns probs (N, C) float64 in input order and, from the same forward passes: with `reps`, every
    hidden state's first-token vector, cls (L + 1, N, D) float16 (entry 0 = the embeddings' output),
    and its mean over the valid tokens, mean (L + 1, N, D) float16; with `head_input`, the last hidden
    state's first token, head_input (N, 1, D) float32 (what the classification head reads).
    """
    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {"probs": np.zeros((len(ids), model.config.num_labels))}
    for idx, batch in eval_batches(ids, batch_size, pad_id, device):
        with precision.autocast():
            res = model(**batch, output_hidden_states=reps or head_input)
        out["probs"][idx] = torch.softmax(res.logits.double(), -1).cpu().numpy()  # logits (B, C)
        if reps:
            h = torch.stack(res.hidden_states).float()  # (L + 1, B, T, D)
            m = batch["attention_mask"][None, :, :, None].to(h.dtype)  # (1, B, T, 1)
            for name, x in (("cls", h[:, :, 0]), ("mean", (h * m).sum(2) / m.sum(2))):  # (L + 1, B, D) each
                out.setdefault(name, np.zeros((x.shape[0], len(ids), x.shape[2]), dtype=np.float16))[:, idx] = (
                    x.half().cpu().numpy()
                )
        if head_input:
            last = res.hidden_states[-1][:, :1].float()  # (B, 1, D)
            out.setdefault("head_input", np.zeros((len(ids), 1, last.shape[2]), dtype=np.float32))[idx] = (
                last.cpu().numpy()
            )
    model.train(was_training)
    return out


def accuracy_and_loss(probs: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """(accuracy, mean NLL) of probabilities (N, C) against labels (N,)."""
    y = np.asarray(labels)
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))
    return float((probs.argmax(1) == y).mean()), float(nll.mean())


def probe_step(
    model: nn.Module,
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    pad_id: int,
    batch_size: int,
    device: torch.device,
) -> Callable[[str], None]:
    """A representative forward + backward of `model` at `batch_size` under a named precision (the precision probe)."""
    idx = np.argsort([len(x) for x in ids])[len(ids) // 2 :][:batch_size]
    batch = to_device(collate(ids, idx, pad_id, labels), device)

    def run(name: str) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def iterate(items: Sequence, desc: str) -> Iterator:
    """A tqdm bar over `items` (quiet when stderr is not a terminal)."""
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, disable=None, leave=False))
