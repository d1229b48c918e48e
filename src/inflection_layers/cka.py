"""Stage `cka`: Delta-CKA = 1 - CKA per layer between the source model (the group's `none` cell) and each analysed
cell.

Linear CKA in one shared PCA basis (`analysis.pca_dim`), its debiased and standardised variants
(:mod:`inflection_layers.similarity`); layers whose representation is constant get no row.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from inflection_layers.artifacts import read_npy, stage_args, write_csv, write_json
from inflection_layers.cells import Cell, layer_of, locate
from inflection_layers.cells import cells as cells_of
from inflection_layers.config import load_params
from inflection_layers.errors import run_main
from inflection_layers.similarity import debiased_cka, delta_cka, linear_cka, shared_pca

logger = logging.getLogger(__name__)


def cka_rows(before: np.ndarray, after: np.ndarray, pca_dim: int, **cell: object) -> list[dict]:
    """Tidy rows (layer, metric, value, **cell) of every Delta-CKA variant; before/after (L + 1, N, D), embeddings -1.

    Layers where a representation is constant (the embeddings' [CLS] vector is the same for every
    sentence) have no defined CKA and get no row.
    """
    rows = []
    for i, (b, a) in enumerate(zip(before, after, strict=False)):
        raw = shared_pca(b, a, pca_dim)  # one basis for the linear and debiased variants
        values = {
            "delta_cka": 1.0 - linear_cka(*raw),
            "delta_cka_debiased": 1.0 - debiased_cka(*raw),
            "delta_cka_standardized": delta_cka(b, a, pca_dim=pca_dim, method="linear", standardized=True),
        }
        rows += [
            {"layer": layer_of(i), "metric": m, "value": float(v), **cell} for m, v in values.items() if np.isfinite(v)
        ]
    return rows


def main() -> None:
    """Read every analysed cell's representations (`none` is the source model), write the tidy table and the means."""
    args = stage_args(
        "Stage `cka`: Delta-CKA per layer, source model vs every analysed cell.",
        {
            "cells*": "folders of fine-tuned cells (models/finetune models/finetune_peft)",
            "table": "tidy CSV: layer, metric, value, target, regime, seed, strategy, family",
            "metrics": "per-cell summary JSON",
        },
    )
    params = load_params()
    pooling = f"{params.analysis.pooling}.npy"
    cells = [c for c in cells_of(params, analysis_only=True) if c.strategy != "none"]
    rows, summary, t0 = [], {}, time.perf_counter()
    for cell in tqdm(cells, desc="cka", disable=None, leave=False):
        before = read_npy(locate(args.cells, Cell(cell.group, "none")) / pooling)
        after = read_npy(locate(args.cells, cell) / pooling)
        cell_rows = cka_rows(before, after, params.analysis.pca_dim, **cell.key())
        rows += cell_rows
        top = [r["value"] for r in cell_rows if r["metric"] == "delta_cka"]
        summary[cell.name] = {"mean_delta_cka": float(np.mean(top)), "last_layer_delta_cka": top[-1]}
    write_csv(args.table, pd.DataFrame(rows))
    write_json(args.metrics, {"cells": summary, "wall_seconds": round(time.perf_counter() - t0, 2)})
    logger.info("Delta-CKA of %d cells in %.0f s", len(cells), time.perf_counter() - t0)


if __name__ == "__main__":
    run_main(main)
