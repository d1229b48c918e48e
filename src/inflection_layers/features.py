"""Stage `features`: sparse-autoencoder features of every layer, before and after adaptation.

For each source model and encoder layer, a TopK sparse autoencoder (:mod:`inflection_layers.sae`;
`features.expansion` x the hidden size, `features.k` active latents, a fixed seed) is trained on token activations
(padding excluded) of the source model's SST-2 sample and the targets' train sentences: whole sentences in a seeded
order until `features.train_tokens` tokens. Held-out tokens are the analysis sample's (the targets'
`finetune.eval_splits`), never trained on. Rows of metrics/features.csv (layer 0 .. L-1):

- per source model and target: the SAE's held-out FVU, L0 and share of dead latents;
- per analysed adapted cell (its model rebuilt from the source and its saved adapter or trained weights): the mean
  per-token cosine similarity of hidden states before and after adaptation (Nadipalli, arXiv 2502.16722), the
  source SAE's FVU on the cell's activations, its excess over the FVU on the source's own activations, and that
  excess per unit of shift (1 - cosine): how far adaptation moved off the source's dictionary beyond what any shift
  costs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from safetensors.torch import load_file

from inflection_layers.artifacts import read_json, read_parquet, stage_args, write_csv, write_json
from inflection_layers.cells import Cell, locate, sources
from inflection_layers.cells import cells as cells_of
from inflection_layers.config import Params, load_params
from inflection_layers.errors import InputError, run_main
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.precision import Precision, resolve
from inflection_layers.sae import Scale, evaluate_sae, token_cosine, train_sae
from inflection_layers.temperature import AttentionTemperature
from inflection_layers.training import eval_batches, tokenize

logger = logging.getLogger(__name__)


@torch.no_grad()
def token_states(
    model: torch.nn.Module, ids: list[list[int]], batch_size: int, pad: int, device: torch.device, precision: Precision
) -> np.ndarray:
    """Every encoder layer's hidden state at every valid token, (L, n_tokens, D) float16, tokens in sentence order."""
    model.eval()
    parts: dict[int, list] = {}
    for idx, batch in eval_batches(ids, batch_size, pad, device):
        with precision.autocast():
            hidden = model(**batch, output_hidden_states=True).hidden_states[1:]  # L of (B, T, D)
        valid = batch["attention_mask"].bool()
        for row, i in enumerate(idx):
            parts[int(i)] = (
                torch.stack([h[row][valid[row]] for h in hidden]).float().half().cpu().numpy()
            )  # (L, T_i, D)
    return np.concatenate([parts[i] for i in range(len(ids))], axis=1)


def training_sentences(lengths: list[int], train_tokens: int, seed: int) -> np.ndarray:
    """Indices of whole sentences in a seeded order until they hold at least `train_tokens` tokens (all if fewer)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    enough = int(np.searchsorted(np.cumsum(np.asarray(lengths)[order]), train_tokens)) + 1
    return np.sort(order[:enough])


def rebuild(source: Path, cell_dir: Path, metrics: dict) -> torch.nn.Module:
    """An analysed cell's model from its source checkpoint and what `finetune` saved: an adapter (with the attention
    temperature the cell is evaluated with) or its trained parameters."""
    model = load_model(str(source))
    if (cell_dir / "adapter").is_dir():
        model = PeftModel.from_pretrained(model, cell_dir / "adapter")
        if tau := metrics.get("temperature"):
            AttentionTemperature(model, tau["layers"], tau["tau_evaluation"])
    elif (cell_dir / "trainable.safetensors").is_file():
        missing = set(load_file(cell_dir / "trainable.safetensors")) - set(dict(model.named_parameters()))
        if missing:
            raise InputError(
                f"{cell_dir}/trainable.safetensors: parameters {sorted(missing)[:3]} are not in the source model"
            )
        model.load_state_dict(load_file(cell_dir / "trainable.safetensors"), strict=False)
    else:
        raise InputError(
            f"{cell_dir}: neither an adapter nor trainable.safetensors; rerun the stage that writes the cell"
        )
    return model


def fit_saes(states: np.ndarray, params: Params) -> list[tuple[Scale, object]]:
    """One (scale, TopK SAE) per layer of token states (L, N, D)."""
    f, out = params.features, []
    for layer in range(states.shape[0]):
        x = torch.from_numpy(states[layer]).float()
        scale = Scale.fit(x)
        out.append(
            (scale, train_sae(scale(x), f.expansion * x.shape[1], f.k, f.epochs, f.batch_size, f.lr, f.seed + layer))
        )
    return out


def score_cell(saes: list, before: np.ndarray, own: list[float], after: np.ndarray, key: dict) -> list[dict]:
    """Per layer: cosine before/after, the source SAE's FVU on the cell's activations, its excess over `own` (the
    FVU on the source's own held-out activations, per layer), and that excess per unit of shift."""
    rows = []
    for layer, (scale, sae) in enumerate(saes):
        cos = token_cosine(before[layer], after[layer])
        fvu_after = evaluate_sae(sae, scale(torch.from_numpy(after[layer])))["fvu"]
        shift = 1.0 - cos
        values = {
            "cosine": cos,
            "fvu": fvu_after,
            "excess_fvu": fvu_after - own[layer],
            "excess_fvu_per_shift": (fvu_after - own[layer]) / shift if shift > 1e-9 else float("nan"),
        }
        rows += [{"layer": layer, "metric": m, "value": v, **key} for m, v in values.items()]
    return rows


def source_rows(
    params: Params,
    source: Path,
    data_dir: Path,
    cell_roots: list[Path],
    metric_roots: list[Path],
    cells: list[Cell],
    device: torch.device,
) -> list[dict]:
    """Every row of one source model: its SAEs' held-out scores per target, and every analysed cell built on it."""
    f, p = params.features, params.finetune
    tokenizer, model = load_tokenizer(str(source)), load_model(str(source)).to(device)
    precision = resolve(params.model.precision, device, params.model.name)  # the decision the training stages kept
    pad, size = tokenizer.pad_token_id, p.eval_batch_size
    texts = pd.concat(
        [
            read_parquet(data_dir / f"{name}.parquet", ["text"])["text"]
            for name in ["sst2_source", *(f"{t}_train" for t in params.study.targets)]
        ],
        ignore_index=True,
    )
    ids = tokenize(tokenizer, texts, params.model.max_length)
    chosen = training_sentences([len(x) for x in ids], f.train_tokens, f.seed)
    seed_everything(f.seed)
    saes = fit_saes(token_states(model, [ids[i] for i in chosen], size, pad, device, precision), params)
    rows, key = [], {"regime": cells[0].group.regime if cells else None, "seed": cells[0].group.seed if cells else None}
    for target in params.study.targets:
        held = pd.concat([read_parquet(data_dir / f"{target}_{s}.parquet", ["text"]) for s in p.eval_splits])["text"]
        held_ids = tokenize(tokenizer, held, params.model.max_length)
        before = token_states(model, held_ids, size, pad, device, precision)
        scores = [evaluate_sae(sae, scale(torch.from_numpy(before[layer]))) for layer, (scale, sae) in enumerate(saes)]
        rows += [
            {"layer": layer, "metric": m, "value": v, "target": target, **key, "strategy": "none", "family": "none"}
            for layer, layer_scores in enumerate(scores)
            for m, v in layer_scores.items()
        ]
        own = [x["fvu"] for x in scores]  # the source's held-out FVU per layer: the baseline of every cell's excess
        for cell in [c for c in cells if c.group.target == target and c.strategy != "none"]:
            metrics = read_json(locate(metric_roots, cell, ".json"))
            cell_model = rebuild(source, locate(cell_roots, cell), metrics).to(device)
            after = token_states(cell_model, held_ids, size, pad, device, precision)
            rows += score_cell(saes, before, own, after, cell.key())
    return rows


def main() -> None:
    """Parse the paths dvc.yaml gives, train every source model's SAEs, score every analysed cell, write the table."""
    args = stage_args(
        __doc__,
        {
            "sources": "folder of source checkpoints (models/source)",
            "data": "folder of prepared splits",
            "cells*": "folders of fine-tuned cells (models/finetune models/finetune_peft models/finetune_tau)",
            "cell_metrics*": "their metrics folders, in the same order",
            "table": "tidy CSV: layer, metric, value, target, regime, seed, strategy, family",
            "metrics": "summary JSON: time, sizes",
        },
    )
    params, t0, device = load_params(), time.perf_counter(), pick_device()
    analysed = cells_of(params, analysis_only=True)
    rows = []
    for src in sources(params.study):
        cells = [c for c in analysed if c.group.source == src]
        rows += source_rows(params, args.sources / src.name, args.data, args.cells, args.cell_metrics, cells, device)
        logger.info("features of %s done after %.0f s", src.name, time.perf_counter() - t0)
    table = pd.DataFrame(rows)
    write_csv(args.table, table)
    write_json(
        args.metrics,
        {
            "sources": len(sources(params.study)),
            "rows": len(table),
            "layers": int(table["layer"].max()) + 1,
            "wall_seconds": round(time.perf_counter() - t0, 2),
        },
    )


if __name__ == "__main__":
    run_main(main)
