"""Layer-wise linear and MLP probes on [CLS] representations, with shuffled-label and majority controls.

Setting of arXiv 2511.00797 (MLP = Linear(D, 768) -> ReLU -> Dropout(0.1) -> Linear(768, C); AdamW
lr 3e-3, wd 1e-4, 20 epochs, batch 128). Features are z-scored with train statistics: [CLS] vectors
have a few huge dimensions. The shuffled-label probe is the control (Hewitt & Liang 2019).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from sklearn.model_selection import train_test_split
from torch import nn

from inflection_layers.artifacts import cell_dirs, write_csv, write_json
from inflection_layers.config import load_params

logger = logging.getLogger(__name__)

KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class ProbeConfig:
    """One probe: its kind, capacity and optimiser settings."""

    kind: str
    hidden: int = 768
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 20
    batch_size: int = 128
    standardize: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("kind", self.kind in KINDS, f"one of {KINDS}"),
            ("hidden", self.hidden >= 1, "an int >= 1"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("epochs", self.epochs >= 1, "an int >= 1"),
            ("batch_size", self.batch_size >= 1, "an int >= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"ProbeConfig.{name}={getattr(self, name)!r}: must be {allowed}")


def make_probe(dim: int, num_classes: int, cfg: ProbeConfig) -> nn.Module:
    """A probe mapping (N, dim) features to (N, num_classes) logits."""
    if cfg.kind == "linear":
        return nn.Linear(dim, num_classes)
    return nn.Sequential(
        nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, num_classes)
    )


def train_probe(
    X_train: np.ndarray, y_train: np.ndarray, X_eval: np.ndarray, y_eval: np.ndarray, cfg: ProbeConfig, seed: int
) -> dict:
    """Train a probe on (N, D) features and (N,) int labels; eval accuracy, train accuracy and eval loss."""
    Xtr = torch.as_tensor(np.asarray(X_train, dtype=np.float32))
    Xev = torch.as_tensor(np.asarray(X_eval, dtype=np.float32))
    ytr = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    yev = torch.as_tensor(np.asarray(y_eval, dtype=np.int64))
    if Xtr.ndim != 2 or Xev.ndim != 2 or Xtr.shape[1] != Xev.shape[1]:
        raise ValueError(f"X_train {tuple(Xtr.shape)} and X_eval {tuple(Xev.shape)} must be (N, D) with equal D")
    if len(Xtr) != len(ytr) or len(Xev) != len(yev) or len(ytr) == 0 or len(yev) == 0:
        raise ValueError(f"need non-empty X/y of equal length: train {len(Xtr)}/{len(ytr)}, eval {len(Xev)}/{len(yev)}")
    if cfg.standardize:
        mean, std = Xtr.mean(0), Xtr.std(0, unbiased=False)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: centre only
        Xtr, Xev = (Xtr - mean) / std, (Xev - mean) / std
    num_classes = int(max(ytr.max(), yev.max())) + 1
    n = len(Xtr)

    with torch.random.fork_rng(devices=[]):  # init and dropout seeded without touching global RNG state
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = make_probe(Xtr.shape[1], num_classes, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    model.eval()
    with torch.no_grad():
        logits_ev = model(Xev)
        out = {
            "accuracy": (logits_ev.argmax(1) == yev).float().mean().item(),
            "train_accuracy": (model(Xtr).argmax(1) == ytr).float().mean().item(),
            "loss": F.cross_entropy(logits_ev, yev).item(),
        }
    logger.debug("%s probe (seed %d): %s", cfg.kind, seed, out)
    return out


def majority_baseline(y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Eval accuracy of always predicting the most frequent train label (ties: the smallest label)."""
    y_train, y_eval = np.asarray(y_train, dtype=np.int64), np.asarray(y_eval, dtype=np.int64)
    if y_train.size == 0 or y_eval.size == 0:
        raise ValueError("majority_baseline needs non-empty y_train and y_eval")
    return float(np.mean(y_eval == np.bincount(y_train).argmax()))


def probe_layers(
    reps: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, eval_idx: np.ndarray,
    cfgs: Sequence[ProbeConfig], seed: int, control: bool = True,
) -> list[dict]:
    """Probe every layer of (L, N, D) reps; tidy rows {layer, probe, accuracy, train_accuracy}.

    Per layer: one row per config, a ``{kind}_shuffled`` row per config when `control` (trained on
    train labels permuted with `seed`, scored on the true eval labels), and one ``majority`` row.
    Layers whose representation is the same for every example get no rows.
    """
    kinds = [c.kind for c in cfgs]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"probe kinds must be unique per call, got {kinds}")
    labels = np.asarray(labels)
    y_tr, y_ev = labels[train_idx], labels[eval_idx]
    y_shuf = np.random.default_rng(seed).permutation(y_tr)
    majority = {"accuracy": majority_baseline(y_tr, y_ev), "train_accuracy": majority_baseline(y_tr, y_tr)}
    rows: list[dict] = []
    for layer in range(len(reps)):
        X = np.asarray(reps[layer])
        if not np.ptp(X, axis=0).any():  # the same vector for every example (the embeddings' [CLS]): nothing to probe
            logger.info("layer %d: constant representation, skipped", layer)
            continue
        X_tr, X_ev = X[train_idx], X[eval_idx]
        for cfg in cfgs:
            runs = [(cfg.kind, y_tr)] + ([(f"{cfg.kind}_shuffled", y_shuf)] if control else [])
            for name, y in runs:
                res = train_probe(X_tr, y, X_ev, y_ev, cfg, seed)
                rows.append({"layer": layer, "probe": name, **{k: res[k] for k in ("accuracy", "train_accuracy")}})
        rows.append({"layer": layer, "probe": "majority", **majority})
        logger.info("layer %d: %s", layer, {r["probe"]: round(r["accuracy"], 3) for r in rows if r["layer"] == layer})
    return rows


def split_indices(
    n: int, train_size: int, eval_size: int, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted train and eval indices into range(n), stratified by `stratify` (n,) if given."""
    if train_size < 1 or eval_size < 1:
        raise ValueError(f"train_size={train_size} and eval_size={eval_size} must both be >= 1")
    if train_size + eval_size > n:
        raise ValueError(f"train_size={train_size} + eval_size={eval_size} exceeds n={n}")
    if stratify is not None and len(stratify) != n:
        raise ValueError(f"stratify has length {len(stratify)}, expected n={n}")
    tr, ev = train_test_split(
        np.arange(n), train_size=train_size, test_size=eval_size, random_state=seed, stratify=stratify
    )
    return np.sort(tr), np.sort(ev)


# --- stage `probes`: linear and MLP probes per layer for the source models and every adapted cell ---


def probe_cell(reps_path: Path, labels: np.ndarray, train_idx: np.ndarray, eval_idx: np.ndarray, cfgs: Sequence[ProbeConfig], seed: int) -> list[dict]:
    """Probe one cell's (L + 1, N, D) representations with one torch thread (cells run in parallel)."""
    torch.set_num_threads(1)
    return probe_layers(np.load(reps_path), labels, train_idx, eval_idx, cfgs, seed)


def main() -> None:
    """Probe every cell (the `none` cell is the source model) on one shared stratified split; write tidy rows and per-cell summaries."""
    parser = argparse.ArgumentParser(description="Stage `probes`: linear and MLP probes per layer on the analysis sample.")
    parser.add_argument("--cells", type=Path, nargs="+", required=True, help="folders of fine-tuned cells (models/finetune models/finetune_lora)")
    parser.add_argument("--table", type=Path, required=True, help="tidy CSV: layer, metric, value, regime, strategy, seed")
    parser.add_argument("--metrics", type=Path, required=True, help="per-cell summary JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    p, pooling = params.probe, params.analysis.pooling
    cfgs = [ProbeConfig(kind=k, hidden=p.hidden, dropout=p.dropout, lr=p.lr, weight_decay=p.weight_decay, epochs=p.epochs, batch_size=p.batch_size) for k in KINDS]
    cells = params.study.cells()
    paths = cell_dirs(args.cells, cells, [f"{pooling}.npy", "predictions.parquet"])
    labels = pd.read_parquet(paths[0] / "predictions.parquet", columns=["label"])["label"].to_numpy()
    train_idx, eval_idx = split_indices(len(labels), p.train_size, p.eval_size, p.seed, stratify=labels)

    jobs = (delayed(probe_cell)(path / f"{pooling}.npy", labels, train_idx, eval_idx, cfgs, p.seed) for path in paths)
    results = Parallel(n_jobs=-1)(jobs)
    rows, summary = [], {}
    for (regime, strategy, seed), cell_rows in zip(cells, results):
        cell = {"regime": regime, "strategy": strategy, "seed": seed}
        rows += [{"layer": r["layer"] - 1, "metric": r["probe"], "value": r["accuracy"], **cell} for r in cell_rows]
        best = {k: max(r["accuracy"] for r in cell_rows if r["probe"] == k) for k in (*KINDS, *(f"{k}_shuffled" for k in KINDS))}
        summary[f"{regime}-{strategy}-{seed}"] = {f"best_{k}": v for k, v in best.items()}
    write_csv(args.table, pd.DataFrame(rows))
    write_json(args.metrics, summary)


if __name__ == "__main__":
    main()
