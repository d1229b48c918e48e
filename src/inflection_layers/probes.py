"""Stage `probes`: linear and MLP probes on every layer's representation, with shuffled-label and majority controls.

Setting of arXiv 2511.00797 (MLP = Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, C); AdamW,
`probe.*`). Features are z-scored with train statistics ([CLS] vectors have a few huge dimensions).
The probes of all layers of a cell train together as one batched model (one independent probe per
layer: AdamW is elementwise, so stacking changes nothing but speed). The control (Hewitt & Liang
2019) is a probe trained on shuffled train labels, scored on the true eval labels: each layer of
each cell gets its own permutations (`probe.controls` of them), from a fixed seed.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import zlib

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from inflection_layers.artifacts import read_npy, read_parquet, stage_args, write_csv, write_json
from inflection_layers.cells import Cell, layer_of, locate
from inflection_layers.cells import cells as cells_of
from inflection_layers.config import Probe, load_params
from inflection_layers.errors import run_main
from inflection_layers.similarity import is_constant

logger = logging.getLogger(__name__)

KINDS = ("linear", "mlp")


def _uniform(shape: tuple[int, ...], fan_in: int, g: torch.Generator) -> torch.nn.Parameter:
    """nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.nn.Parameter((torch.rand(shape, generator=g) * 2 - 1) * bound)


def _check(Xtr: torch.Tensor, ytr: torch.Tensor, Xev: torch.Tensor, yev: torch.Tensor, kind: str) -> None:
    """Refuse shapes other than X_train (P, N, D), y_train (P, N), X_eval (P, M, D), y_eval (M,) and unknown kinds."""
    if (
        Xtr.ndim != 3
        or Xev.ndim != 3
        or Xtr.shape[::2] != Xev.shape[::2]
        or ytr.shape != Xtr.shape[:2]
        or yev.shape != Xev.shape[1:2]
    ):
        raise ValueError(
            "expected X_train (P, N, D), y_train (P, N), X_eval (P, M, D), y_eval (M,); got "
            f"{tuple(Xtr.shape)}, {tuple(ytr.shape)}, {tuple(Xev.shape)}, {tuple(yev.shape)}"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; expected one of {KINDS}")


def standardise(Xtr: torch.Tensor, Xev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score (P, N, D) and (P, M, D) with each probe's train statistics; constant features are only centred."""
    mean, std = Xtr.mean(1, keepdim=True), Xtr.std(1, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (Xtr - mean) / std, (Xev - mean) / std


def _forward(
    weights: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, dropout: float, train: bool
) -> torch.Tensor:
    """P stacked probes: x (P, B, D) -> logits (P, B, C)."""
    for i, (w, b) in enumerate(weights):
        x = torch.baddbmm(b, x, w)
        if i < len(weights) - 1:
            x = F.dropout(F.relu(x), dropout, training=train)
    return x


def _fit(weights: list, Xtr: torch.Tensor, ytr: torch.Tensor, C: int, p: Probe, seed: int, g: torch.Generator) -> None:
    """AdamW on each probe's own mean cross-entropy, `probe.epochs` shuffled passes of `probe.batch_size`."""
    P, N, _ = Xtr.shape
    opt = torch.optim.AdamW([t for pair in weights for t in pair], lr=p.lr, weight_decay=p.weight_decay)
    with torch.random.fork_rng(devices=[]):  # dropout seeded without touching the global RNG state
        torch.manual_seed(seed)
        for _ in range(p.epochs):
            perm = torch.randperm(N, generator=g)
            for i in range(0, N, p.batch_size):
                idx = perm[i : i + p.batch_size]
                logits = _forward(weights, Xtr[:, idx], p.dropout, True)
                loss = F.cross_entropy(logits.reshape(-1, C), ytr[:, idx].reshape(-1)) * P  # each probe's own mean
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def train_probes(
    X_train: np.ndarray, y_train: np.ndarray, X_eval: np.ndarray, y_eval: np.ndarray, kind: str, p: Probe, seed: int
) -> dict[str, np.ndarray]:
    """Train P independent probes at once: X_train (P, N, D), y_train (P, N) int, X_eval (P, M, D), y_eval (M,).

    Returns accuracy (P,) on eval, train_accuracy (P,) and loss (P,) (eval cross-entropy).
    """
    Xtr, Xev = torch.as_tensor(X_train, dtype=torch.float32), torch.as_tensor(X_eval, dtype=torch.float32)
    ytr, yev = torch.as_tensor(y_train, dtype=torch.long), torch.as_tensor(y_eval, dtype=torch.long)
    _check(Xtr, ytr, Xev, yev, kind)
    Xtr, Xev = standardise(Xtr, Xev)
    P, _, D = Xtr.shape
    C = int(max(ytr.max(), yev.max())) + 1
    g = torch.Generator().manual_seed(seed)
    dims = [D, C] if kind == "linear" else [D, p.hidden, C]
    weights = [(_uniform((P, a, b), a, g), _uniform((P, 1, b), a, g)) for a, b in itertools.pairwise(dims)]
    _fit(weights, Xtr, ytr, C, p, seed, g)
    with torch.no_grad():
        ev, tr = _forward(weights, Xev, p.dropout, False), _forward(weights, Xtr, p.dropout, False)
        return {
            "accuracy": (ev.argmax(-1) == yev).float().mean(1).numpy(),
            "train_accuracy": (tr.argmax(-1) == ytr).float().mean(1).numpy(),
            "loss": F.cross_entropy(ev.permute(0, 2, 1), yev.expand(P, -1), reduction="none").mean(1).numpy(),
        }


def majority_baseline(y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Eval accuracy of always predicting the most frequent train label (ties: the smallest label)."""
    y_train, y_eval = np.asarray(y_train, dtype=np.int64), np.asarray(y_eval, dtype=np.int64)
    if y_train.size == 0 or y_eval.size == 0:
        raise ValueError("majority_baseline needs non-empty y_train and y_eval")
    return float(np.mean(y_eval == np.bincount(y_train).argmax()))


def split_indices(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted, stratified train and eval indices into the analysis sample."""
    tr, ev = train_test_split(np.arange(len(labels)), train_size=train_fraction, random_state=seed, stratify=labels)
    return np.sort(tr), np.sort(ev)


def cell_seed(cell: Cell, seed: int) -> int:
    """A fixed seed per cell for its shuffled labellings (crc32 of the cell's name, plus `probe.seed`)."""
    return (zlib.crc32(cell.name.encode()) + seed) % 2**31


def _kind_rows(kind: str, layers: list[int], true: dict, ctrl: list[dict]) -> list[dict]:
    """Rows of one probe kind: its accuracy on the true labels and the mean of its shuffled-label controls."""
    rows = []
    for j, i in enumerate(layers):
        rows.append(
            {
                "layer": layer_of(i),
                "metric": kind,
                "value": float(true["accuracy"][j]),
                "train_accuracy": float(true["train_accuracy"][j]),
            }
        )
        rows.append(
            {
                "layer": layer_of(i),
                "metric": f"{kind}_shuffled",
                "value": float(np.mean([c["accuracy"][j] for c in ctrl])),
                "train_accuracy": float(np.mean([c["train_accuracy"][j] for c in ctrl])),
            }
        )
    return rows


def probe_cell(
    reps: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, eval_idx: np.ndarray, p: Probe, shuffle_seed: int
) -> list[dict]:
    """Probe every non-constant layer of reps (L + 1, N, D) -> rows {layer, probe, accuracy, train_accuracy}.

    Probes: linear and mlp on the true labels; `<kind>_shuffled` (mean over `probe.controls` permutations,
    each layer its own); `majority`. Layers whose representation does not vary (the embeddings' [CLS]) get no rows.
    """
    layers = [i for i in range(len(reps)) if not is_constant(np.asarray(reps[i], dtype=np.float64))]
    if not layers:
        return []
    X = np.asarray(reps[layers], dtype=np.float32)  # (P, N, D)
    Xtr, Xev = X[:, train_idx], X[:, eval_idx]
    y_tr, y_ev = labels[train_idx], labels[eval_idx]
    rng = np.random.default_rng(shuffle_seed)
    rows: list[dict] = []
    for kind in KINDS:
        true = train_probes(Xtr, np.tile(y_tr, (len(layers), 1)), Xev, y_ev, kind, p, p.seed)
        shuffled = (np.stack([rng.permutation(y_tr) for _ in layers]) for _ in range(p.controls))
        ctrl = [train_probes(Xtr, y, Xev, y_ev, kind, p, p.seed) for y in shuffled]
        rows += _kind_rows(kind, layers, true, ctrl)
    majority = majority_baseline(y_tr, y_ev)
    rows += [
        {"layer": layer_of(i), "metric": "majority", "value": majority, "train_accuracy": majority_baseline(y_tr, y_tr)}
        for i in layers
    ]
    return rows


def main() -> None:
    """Probe every analysed cell (the `none` cell is the source model); write tidy rows and per-cell summaries."""
    args = stage_args(
        "Stage `probes`: linear and MLP probes per layer on the analysis sample.",
        {
            "cells*": "folders of fine-tuned cells (models/finetune models/finetune_peft)",
            "table": "tidy CSV: layer, metric, value, train_accuracy, target, regime, seed, strategy, family",
            "metrics": "per-cell summary JSON",
        },
    )
    params = load_params()
    p, pooling = params.probe, f"{params.analysis.pooling}.npy"
    cells = cells_of(params, analysis_only=True)
    rows, summary, splits, t0 = [], {}, {}, time.perf_counter()
    for cell in tqdm(cells, desc="probes", disable=None, leave=False):
        folder = locate(args.cells, cell)
        labels = read_parquet(folder / "predictions.parquet", ["label"])["label"].to_numpy()
        if cell.group.target not in splits:  # one stratified split per target, shared by every cell
            splits[cell.group.target] = split_indices(labels, p.train_fraction, p.seed)
        cell_rows = probe_cell(
            read_npy(folder / pooling), labels, *splits[cell.group.target], p, cell_seed(cell, p.seed)
        )
        rows += [r | cell.key() for r in cell_rows]
        summary[cell.name] = {
            f"best_{k}": max((r["value"] for r in cell_rows if r["metric"] == k), default=None)
            for k in (*KINDS, *(f"{k}_shuffled" for k in KINDS))
        }
    write_csv(args.table, pd.DataFrame(rows))
    write_json(
        args.metrics,
        {
            "cells": summary,
            "sizes": {t: {"train": len(a), "eval": len(b)} for t, (a, b) in splits.items()},
            "wall_seconds": round(time.perf_counter() - t0, 2),
        },
    )
    logger.info("probes of %d cells in %.0f s", len(cells), time.perf_counter() - t0)


if __name__ == "__main__":
    run_main(main)
