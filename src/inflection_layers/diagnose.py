"""Stage `diagnose`: per-layer attention entropy and gradient norms of one source model on Rotten Tomatoes train.

`diagnose.batches` batches of RT train (the cell's seed fixes which) go forward and backward through the
source model in eval mode (no dropout) with no parameter update. Writes a tidy table
(layer, metric, value, regime, seed) for `select` and DVC plots, per-head entropies, and the mean loss
and logit margin (to read gradient profiles per unit of loss).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from inflection_layers.artifacts import read_parquet, write_csv, write_json
from inflection_layers.config import REGIMES, Params, load_params
from inflection_layers.diagnostics import measure, per_layer_means, tidy
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.training import bucketed_batches, collate, to_device, tokenize

logger = logging.getLogger(__name__)


def diagnose(params: Params, model_dir: Path, data_dir: Path, seed: int) -> tuple[dict, torch.Tensor, dict]:
    """Measure a source model -> (per-layer means, per-head entropy (L, H), scalar metrics)."""
    device = pick_device()
    rt = read_parquet(data_dir / "rt_train.parquet", ["text", "label"])
    seed_everything(seed)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir)).to(device).eval()
    ids = tokenize(tokenizer, rt["text"], params.model.max_length)
    labels = rt["label"].tolist()
    batches = bucketed_batches([len(x) for x in ids], params.diagnose.batch_size, seed, epoch=0)[: params.diagnose.batches]
    records = []
    for idx in tqdm(batches, desc=f"diagnose {model_dir.name}", disable=None):
        records.append(measure(model, to_device(collate(ids, idx, tokenizer.pad_token_id, labels), device)))
        model.zero_grad(set_to_none=True)
    L = model.config.num_hidden_layers
    heads = torch.stack([r["entropy"] for r in records]).mean(0)  # (L, H)
    scalars = {"loss": float(np.mean([r["loss"] for r in records])), "margin": float(np.mean([r["margin"] for r in records])), "batches": len(records)}
    return per_layer_means(records, L), heads, scalars


def main() -> None:
    """Parse the cell and paths dvc.yaml gives, validate params, measure, write the tables atomically."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=REGIMES, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True, help="source checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help="folder of prepared splits")
    parser.add_argument("--layers", type=Path, required=True, help="tidy per-layer CSV")
    parser.add_argument("--heads", type=Path, required=True, help="per-head entropy CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="scalar metrics JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()

    means, heads, scalars = diagnose(params, args.model, args.data, args.seed)
    cell = {"regime": args.regime, "seed": args.seed}
    write_csv(args.layers, pd.DataFrame(tidy(means, **cell)))
    L, H = heads.shape
    head_rows = [{"layer": l, "head": h, "entropy": float(heads[l, h]), **cell} for l in range(L) for h in range(H)]
    write_csv(args.heads, pd.DataFrame(head_rows))
    write_json(args.metrics, {**cell, **scalars})


if __name__ == "__main__":
    main()
