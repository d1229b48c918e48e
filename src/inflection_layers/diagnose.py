"""Stage `diagnose`: per-layer attention entropy and rank, gradient norms and representation change of one
source model on one target's train split.

`diagnose.batches` batches of the target's train split (the group's seed fixes which, so the UNDER and OVER
models of a seed see the same batches) go forward and backward through the source model in eval mode (no
dropout) with no parameter update (:func:`inflection_layers.diagnostics.measure`). Writes a tidy table
(layer, metric, value, target, regime, seed) for `select` and DVC plots, a per-head table and scalar metrics.
Per layer: entropy, entropy_norm, attn_rank(_max), column_mass(_max), first_column (heads averaged, or their
maximum); act_grad (the primary gradient measure), act_grad_token_mean and act_grad_cls (layer -1 = the
embeddings' output); param_grad, param_norm and rgn = param_grad / param_norm (Auto-RGN); io_change = 1 -
linear CKA between the layer's input and output over the valid tokens.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from inflection_layers.artifacts import read_parquet, stage_args, write_csv, write_json
from inflection_layers.cells import layer_of
from inflection_layers.config import Params, load_params
from inflection_layers.diagnostics import measure, param_norms, per_head_means, per_layer_means, tidy
from inflection_layers.errors import run_main
from inflection_layers.estimate import batch_tokens, decided_precision, stage_estimate
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.similarity import linear_cka
from inflection_layers.training import iterate, measurement_batches

logger = logging.getLogger(__name__)


def io_change(hidden: list[list[torch.Tensor]]) -> list[float]:
    """1 - linear CKA between each layer's input and output tokens; hidden[b][i] (n_valid_b, D), i over L + 1 states.

    Returns (L,) values for layers 0..L-1 (layer l reads hidden state l and writes hidden state l + 1).
    """
    states = [torch.cat([batch[i] for batch in hidden]).double().numpy() for i in range(len(hidden[0]))]  # (n, D)
    return [1.0 - linear_cka(states[i], states[i + 1]) for i in range(len(states) - 1)]


def diagnose(params: Params, model_dir: Path, train: pd.DataFrame, seed: int, stage: str) -> tuple[dict, dict, dict]:
    """Measure a source model -> (per-layer values by metric, per-head metrics {name: (L, H)}, scalar metrics)."""
    device = pick_device()
    seed_everything(seed)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir)).to(device).eval()
    batches = measurement_batches(tokenizer, train, params.model.max_length, params.diagnose, seed)
    estimated = stage_estimate(
        params, model.config.to_dict(), batch_tokens(batches, stage), stage, decided_precision(params)
    )
    records, hidden, tokens = [], [], 0
    for batch in iterate(batches, f"diagnose {model_dir.name}"):
        rec = measure(model, {k: v.to(device) for k, v in batch.items()}, hidden=True)
        hidden.append(rec.pop("hidden"))
        records.append(rec)
        tokens += int(batch["attention_mask"].sum())
        model.zero_grad(set_to_none=True)
    L = model.config.num_hidden_layers
    means = per_layer_means(records, L)
    norms = param_norms(model)
    means["param_norm"] = [norms.get(f"layer.{i}", math.nan) for i in range(L)]
    means["rgn"] = [g / n for g, n in zip(means["param_grad"], means["param_norm"], strict=True)]
    means["io_change"] = io_change(hidden)
    scalars = {
        "loss": float(np.mean([r["loss"] for r in records])),
        "margin": float(np.mean([r["margin"] for r in records])),
        "batches": len(records),
        "tokens": tokens,
        "num_layers": L,
        "embeddings_layer": layer_of(0),
        "estimated_seconds": estimated,
    }
    return means, per_head_means(records), scalars


def head_table(heads: dict[str, torch.Tensor], key: dict) -> pd.DataFrame:
    """One row per (layer, head): every per-head metric (entropy, rank / T, column mass, first-column share)."""
    L, H = next(iter(heads.values())).shape
    rows = [
        {"layer": l, "head": h, **{m: float(v[l, h]) for m, v in heads.items()}, **key}
        for l in range(L)
        for h in range(H)
    ]
    return pd.DataFrame(rows)


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate params, measure, write the tables atomically."""
    args = stage_args(
        __doc__,
        {
            "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
            "model": "source checkpoint folder",
            "data": "folder of prepared splits",
            "layers": "tidy per-layer CSV",
            "heads": "per-head CSV",
            "metrics": "scalar metrics JSON",
        },
    )
    params, group = load_params(), args.group
    train = read_parquet(args.data / f"{group.target}_train.parquet", ["text", "label"])
    t0 = time.perf_counter()
    means, heads, scalars = diagnose(params, args.model, train, group.seed, f"diagnose@{group.name}")
    wall = time.perf_counter() - t0
    key = {"target": group.target, "regime": group.regime, "seed": group.seed}
    write_csv(args.layers, pd.DataFrame(tidy(means, **key)))
    write_csv(args.heads, head_table(heads, key))
    precision = {"precision": "fp32", "precision_reason": "diagnostics are always measured in fp32"}
    rate = round(scalars["tokens"] / wall, 1)
    write_json(args.metrics, {**key, **scalars, "wall_seconds": round(wall, 2), "tokens_per_second": rate, **precision})
    logger.info("%s: entropy minimum at layer %d; %.1f s", group.name, int(np.argmin(means["entropy"])), wall)


if __name__ == "__main__":
    run_main(main)
