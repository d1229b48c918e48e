"""What the `source` and `finetune` stages share: tokenising, length-bucketed batches, the optimiser, evaluation.

Batches are padded only to their own longest sequence (dynamic padding) and built from examples of
similar length (bucketing), so little compute goes to padding. The order is a pure function of the
seed and epoch, so every strategy of one seed sees the same batches (a paired design).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence

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


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, lora_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights (1-D).

    With `lora_lr`, peft's adapter weights (``lora_`` in the name) get that rate, the rest `lr`.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: nothing to optimise")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for n, p in named:
        key = (lora_lr if lora_lr is not None and "lora_" in n else lr, weight_decay if p.ndim >= 2 else 0.0)
        groups.setdefault(key, []).append(p)
    fused = named[0][1].device.type in ("cpu", "cuda")
    param_groups = [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]
    return torch.optim.AdamW(param_groups, lr=lr, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear-decay or constant schedule after `warmup_ratio * total_steps` warm-up steps."""
    warmup = int(round(warmup_ratio * total_steps))
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"unknown schedule {schedule!r}; allowed: ['linear', 'constant']")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 mixed precision on a GPU that supports it, else full fp32.

    Not on CPU: bf16 autocast ran slower than fp32 on our 2-core AVX512-BF16 machine (see the benchmark's (d)).
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss: Tensor, step: int) -> None:
    """Stop with an error naming the step when the loss is NaN or infinite."""
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}: training diverged; lower the learning rate")


def endless_batches(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """`bucketed_batches` epoch after epoch: a step-based loop's batch stream, identical for one seed."""
    epoch = 0
    while True:
        yield from bucketed_batches(lengths, batch_size, seed, epoch)
        epoch += 1


@torch.no_grad()
def predict(
    model: nn.Module,
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    return_reps: bool = False,
) -> dict:
    """Evaluate in length-sorted batches, in eval mode.

    Returns probs (N, C) float64 in input order, loss (mean NLL), accuracy and, with `return_reps`,
    from the same forward passes, every hidden state's [CLS] vector, cls (L + 1, N, D) float16
    (index 0 = embeddings' output), and its mean over the valid tokens, mean (L + 1, N, D) float16.
    """
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    probs = np.zeros((len(ids), model.config.num_labels))
    reps: dict[str, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = to_device(collate(ids, idx, pad_id), device)
        with autocast(device):
            out = model(**batch, output_hidden_states=return_reps)
        probs[idx] = torch.softmax(out.logits.double(), -1).cpu().numpy()  # logits (B, C)
        if return_reps:
            h = torch.stack(out.hidden_states).float()  # (L + 1, B, T, D)
            m = batch["attention_mask"][None, :, :, None].to(h.dtype)  # (1, B, T, 1)
            pooled = {"cls": h[:, :, 0], "mean": (h * m).sum(2) / m.sum(2)}  # (L + 1, B, D) each
            for name, x in pooled.items():
                if name not in reps:
                    reps[name] = np.zeros((x.shape[0], len(ids), x.shape[2]), dtype=np.float16)
                reps[name][:, idx] = x.half().cpu().numpy()
    model.train(was_training)
    y = np.asarray(labels)
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))
    result = {"probs": probs, "loss": float(nll.mean()), "accuracy": float((probs.argmax(1) == y).mean())}
    return result | reps
