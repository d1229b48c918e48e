"""Stage `select`: the LoRA band of one group by SKI, the bands it is compared with, and the rival selectors.

Reads the group's tidy diagnose table; the rule and every comparison band are :mod:`inflection_layers.bands`'.
Writes the selection JSON (every band, the random draws, the rule's params) and a per-layer table for DVC plots.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from inflection_layers.artifacts import read_csv, stage_args, write_csv, write_json
from inflection_layers.bands import complement, random_bands, select_band, top_band, top_k
from inflection_layers.cells import REGIMES, TARGETS, Group
from inflection_layers.config import Ski, load_params
from inflection_layers.errors import InputError, run_main

logger = logging.getLogger(__name__)

SIGNALS = ("entropy", "act_grad", "rgn", "io_change")  # the diagnose metrics a selection reads


def draw_rng(group: Group) -> np.random.Generator:
    """The random bands' generator: a different stream per seed, regime and target (never reused across regimes)."""
    return np.random.default_rng([group.seed, REGIMES.index(group.regime), TARGETS.index(group.target)])


def select_group(
    layers: pd.DataFrame, p: Ski, group: Group, source: str = "the diagnose table"
) -> tuple[dict, pd.DataFrame]:
    """Every band of one group from its tidy diagnose table (layer, metric, value).

    Uses the encoder layers 0..L-1 (the embeddings' output, layer -1, is not a candidate). Returns
    the selection JSON and a per-layer table (layer, <each signal>, ski, in_<each band>) for DVC plots.
    """
    wide = layers[layers["layer"] >= 0].pivot(index="layer", columns="metric", values="value").sort_index()
    missing = set(SIGNALS) - set(wide.columns)
    if missing:
        raise InputError(f"{source} lacks the metrics {sorted(missing)}; rerun `dvc repro diagnose@{group.name}`")
    h, g = wide["entropy"].to_numpy(), wide["act_grad"].to_numpy()
    sel = select_band(h, g, method=p.method, alpha=p.alpha, s=p.s, threshold=p.threshold, max_band=p.max_band)
    k, num_layers = len(sel["band"]), len(h)
    bands = {
        "band": sel["band"],
        "top": top_band(num_layers, k),
        "complement": complement(sel["band"], np.asarray(sel["scores"])),
        "rgn": top_k(wide["rgn"].to_numpy(), k),
        "cka": top_k(wide["io_change"].to_numpy(), k),
    }
    draws = None if p.random_draws == "all" else p.random_draws
    rand = random_bands(num_layers, sel["band"], draws, draw_rng(group))
    table = pd.DataFrame({"layer": wide.index, **{s: wide[s].to_numpy() for s in SIGNALS}, "ski": sel["scores"]})
    for name, b in bands.items():
        table[f"in_{name}"] = table["layer"].isin(b).astype(int)
    result = {
        "num_layers": num_layers,
        "scores": sel["scores"],
        "candidates": sel["candidates"],
        "band_size": k,
        **bands,
        "top_is_band": bands["top"] == bands["band"],
        "random": rand,
        "params": vars(p),
    }
    return result, table


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate `ski.*`, select, write the JSON and the table."""
    args = stage_args(
        __doc__,
        {
            "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
            "layers": "tidy per-layer CSV from `diagnose`",
            "out": "selection JSON",
            "table": "per-layer CSV for DVC plots",
        },
    )
    p = load_params().ski
    group = args.group
    result, table = select_group(read_csv(args.layers, ["layer", "metric", "value"]), p, group, str(args.layers))
    key = {"target": group.target, "regime": group.regime, "seed": group.seed}
    write_json(args.out, {**key, **result})
    write_csv(args.table, table.assign(**key))
    logger.info(
        "%s: band %s, top %s, complement %s, rgn %s, cka %s, %d random bands",
        group.name,
        result["band"],
        result["top"],
        result["complement"],
        result["rgn"],
        result["cka"],
        len(result["random"]),
    )


if __name__ == "__main__":
    run_main(main)
