"""Stage `diagnose`: per-layer attention entropy, gradient norms and representation change of one
source model on one target's train split.

`diagnose.batches` batches of the target's train split (the group's seed fixes which, so the UNDER
and OVER models of a seed see the same batches) go forward and backward through the source model in
eval mode (no dropout) with no parameter update. Writes a tidy table (layer, metric, value, target,
regime, seed) for `select` and DVC plots, per-head entropies, and scalar metrics. Metrics per layer:
entropy, entropy_norm (per head, averaged), act_grad and act_grad_cls (gradient norm per token,
averaged over valid tokens / at the first token; layer -1 = the embeddings' output), param_grad,
param_norm and rgn = param_grad / param_norm (Auto-RGN's relative gradient norm), and io_change =
1 - linear CKA between the layer's input and output over the valid tokens (forward only).
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
from inflection_layers.diagnostics import measure, param_norms, per_layer_means, tidy
from inflection_layers.errors import run_main
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.similarity import linear_cka
from inflection_layers.training import bucketed_batches, collate, iterate, to_device, tokenize

logger = logging.getLogger(__name__)


def io_change(hidden: list[list[torch.Tensor]]) -> list[float]:
    """1 - linear CKA between each layer's input and output tokens; hidden[b][i] (n_valid_b, D), i over L + 1 hidden states.

    Returns (L,) values for layers 0..L-1 (layer l reads hidden state l and writes hidden state l + 1).
    """
    per_state = [
        torch.cat([batch[i] for batch in hidden]).double().numpy() for i in range(len(hidden[0]))
    ]  # (n_tokens, D) each
    return [1.0 - linear_cka(per_state[i], per_state[i + 1]) for i in range(len(per_state) - 1)]


def diagnose(params: Params, model_dir: Path, train: pd.DataFrame, seed: int) -> tuple[dict, torch.Tensor, dict]:
    """Measure a source model -> (per-layer values by metric, per-head entropy (L, H), scalar metrics)."""
    device = pick_device()
    seed_everything(seed)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir)).to(device).eval()
    ids = tokenize(tokenizer, train["text"], params.model.max_length)
    labels = train["label"].tolist()
    batches = bucketed_batches([len(x) for x in ids], params.diagnose.batch_size, seed, epoch=0)[
        : params.diagnose.batches
    ]
    records, hidden, tokens = [], [], 0
    for idx in iterate(batches, f"diagnose {model_dir.name}"):
        batch = to_device(collate(ids, idx, tokenizer.pad_token_id, labels), device)
        rec = measure(model, batch, hidden=True)
        hidden.append(rec.pop("hidden"))
        records.append(rec)
        tokens += int(batch["attention_mask"].sum())
        model.zero_grad(set_to_none=True)
    L = model.config.num_hidden_layers
    means = per_layer_means(records, L)
    norms = param_norms(model)
    means["param_norm"] = [norms.get(f"layer.{i}", math.nan) for i in range(L)]
    means["rgn"] = [g / n for g, n in zip(means["param_grad"], means["param_norm"])]
    means["io_change"] = io_change(hidden)
    heads = torch.stack([r["entropy"] for r in records]).mean(0)  # (L, H)
    scalars = {
        "loss": float(np.mean([r["loss"] for r in records])),
        "margin": float(np.mean([r["margin"] for r in records])),
        "batches": len(records),
        "tokens": tokens,
        "num_layers": L,
        "embeddings_layer": layer_of(0),
    }
    return means, heads, scalars


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate params, measure, write the tables atomically."""
    args = stage_args(
        __doc__,
        {
            "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
            "model": "source checkpoint folder",
            "data": "folder of prepared splits",
            "layers": "tidy per-layer CSV",
            "heads": "per-head entropy CSV",
            "metrics": "scalar metrics JSON",
        },
    )
    params, group = load_params(), args.group
    train = read_parquet(args.data / f"{group.target}_train.parquet", ["text", "label"])

    t0 = time.perf_counter()
    means, heads, scalars = diagnose(params, args.model, train, group.seed)
    wall = time.perf_counter() - t0
    key = {"target": group.target, "regime": group.regime, "seed": group.seed}
    write_csv(args.layers, pd.DataFrame(tidy(means, **key)))
    L, H = heads.shape
    write_csv(
        args.heads,
        pd.DataFrame(
            [{"layer": l, "head": h, "entropy": float(heads[l, h]), **key} for l in range(L) for h in range(H)]
        ),
    )
    write_json(
        args.metrics,
        {
            **key,
            **scalars,
            "wall_seconds": round(wall, 2),
            "tokens_per_second": round(scalars["tokens"] / wall, 1),
            "precision": "fp32",
            "precision_reason": "diagnostics are always measured in fp32",
        },
    )
    logger.info("%s: entropy minimum at layer %d; %.1f s", group.name, int(np.argmin(means["entropy"])), wall)


if __name__ == "__main__":
    run_main(main)
