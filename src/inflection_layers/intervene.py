"""Stage `intervene`: the attention temperature at the SKI band, on the diagnose batches, with no training.

For the group's source model, each tau of `intervene.temperatures` and three placements of the knob
(:mod:`inflection_layers.temperature`): the SKI band (the intervention), each random band of the selection
(control bands of the same size, drawn uniformly from every other band of that size: the specificity control)
and every layer, one forward and backward per diagnose batch (the same batches as `diagnose`, eval mode, no
update) records the attention entropy per layer (the manipulation check), the activation-gradient norm at every
layer (the primary measure; layer -1 = the embeddings' output) and the loss. tau = 1 is the unperturbed model,
measured once: every placement's baseline. Writes a tidy CSV (placement, band, tau, layer, metric, value, group).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from inflection_layers.artifacts import read_json, read_parquet, stage_args, write_csv, write_json
from inflection_layers.cells import Group
from inflection_layers.config import Params, load_params
from inflection_layers.diagnostics import measure, per_layer_means
from inflection_layers.errors import run_main
from inflection_layers.estimate import batch_tokens, decided_precision, stage_estimate
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.temperature import AttentionTemperature
from inflection_layers.training import iterate, measurement_batches

logger = logging.getLogger(__name__)


def placements(selection: dict) -> dict[str, list[int]]:
    """Where the knob goes: the SKI band, each control band (the selection's random bands), and every layer."""
    out = {"band": list(selection["band"])}
    out |= {f"control_{i}": list(r["layers"]) for i, r in enumerate(selection["random"])}
    return out | {"all": list(range(int(selection["num_layers"])))}


def measure_under(model: torch.nn.Module, batches: list[dict], layers: list[int], tau: float) -> dict[str, list[float]]:
    """Entropy (L,), act_grad (L + 1,) and loss, averaged over the batches, with tau on `layers`."""
    records = []
    with AttentionTemperature(model, layers, tau):
        for batch in batches:
            records.append(measure(model, batch))
            model.zero_grad(set_to_none=True)
    means = per_layer_means(records, model.config.num_hidden_layers)
    return {
        "entropy": means["entropy"],
        "act_grad": means["act_grad"],
        "loss": [float(np.mean([r["loss"] for r in records]))],
    }


def rows_of(values: dict[str, list[float]], **key: object) -> list[dict]:
    """Tidy rows; act_grad starts at the embeddings' output (layer -1), the loss has no layer."""
    first = {"entropy": 0, "act_grad": -1}
    return [
        {"layer": first[m] + i if m in first else None, "metric": m, "value": v, **key}
        for m, vs in values.items()
        for i, v in enumerate(vs)
    ]


def intervene(params: Params, model: torch.nn.Module, batches: list[dict], selection: dict) -> list[dict]:
    """Every (placement, tau) of the design; tau = 1 once, as placement 'none'."""
    rows = rows_of(measure_under(model, batches, [], 1.0), placement="none", band="", tau=1.0)
    for name, layers in iterate(list(placements(selection).items()), "intervene: placements"):
        for tau in [t for t in params.intervene.temperatures if t != 1.0]:
            values = measure_under(model, batches, layers, tau)
            rows += rows_of(values, placement=name, band=" ".join(map(str, layers)), tau=float(tau))
    return rows


def load_inputs(params: Params, model_dir: Path, data_dir: Path, group: Group) -> tuple[torch.nn.Module, list[dict]]:
    """The source model (eval mode) and the diagnostic batches of the group's target train split, on the device."""
    device = pick_device()
    train = read_parquet(data_dir / f"{group.target}_train.parquet", ["text", "label"])
    model = load_model(str(model_dir)).to(device).eval()
    tokenizer = load_tokenizer(str(model_dir))
    batches = measurement_batches(tokenizer, train, params.model.max_length, params.diagnose, group.seed)
    return model, [{k: v.to(device) for k, v in b.items()} for b in batches]


def main() -> None:
    """Parse the group and paths dvc.yaml gives, measure every placement and tau, write the table."""
    args = stage_args(
        __doc__,
        {
            "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
            "model": "source checkpoint folder",
            "data": "folder of prepared splits",
            "selection": "selection JSON from `select`",
            "table": "tidy CSV",
            "metrics": "JSON: time and the bands",
        },
    )
    params, group = load_params(), args.group
    selection = read_json(args.selection)
    t0 = time.perf_counter()
    seed_everything(group.seed)
    model, batches = load_inputs(params, args.model, args.data, group)
    stage = f"intervene@{group.name}"
    estimated = stage_estimate(
        params, model.config.to_dict(), batch_tokens(batches, stage), stage, decided_precision(params)
    )
    rows = intervene(params, model, batches, selection)
    key = {"target": group.target, "regime": group.regime, "seed": group.seed}
    write_csv(args.table, pd.DataFrame(rows).assign(**key))
    wall = time.perf_counter() - t0
    write_json(
        args.metrics,
        {
            **key,
            "placements": placements(selection),
            "temperatures": params.intervene.temperatures,
            "wall_seconds": round(wall, 2),
            "estimated_seconds": estimated,
            "precision": "fp32",
            "precision_reason": "diagnostics are always measured in fp32",
        },
    )
    logger.info(
        "%s: %d placements x %d temperatures in %.0f s",
        group.name,
        len(placements(selection)),
        len(params.intervene.temperatures),
        wall,
    )


if __name__ == "__main__":
    run_main(main)
