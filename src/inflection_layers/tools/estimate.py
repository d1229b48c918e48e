"""How long will it take? The stale stages' estimated time on this machine, before `dvc repro` starts.

    python -m inflection_layers.tools.estimate                  # the stale stages (`dvc status`, params.yaml)
    python -m inflection_layers.tools.estimate -S profile=quick # a profile's whole pipeline, as `dvc exp run -S`
                                                                # composes it

`make study` runs the first before `dvc repro` (a stage cannot: `dvc repro` holds the repository lock while
stages run). The FLOP model is :mod:`inflection_layers.estimate`'s; the rates of this machine come from a timed
probe of a training step, an evaluation pass and a diagnostic pass on the study's model (about a minute, once per
machine, model and precision; kept beside the precision decision). Each stage also records the estimate before it
runs, so the report puts it beside the measured time. A run estimated over 30 minutes suggests `quick` first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from inflection_layers.archs import model_config
from inflection_layers.config import load_params, parse_params
from inflection_layers.errors import run_main
from inflection_layers.estimate import (
    CACHE,
    Tokens,
    Work,
    all_stages,
    describe,
    floor_seconds,
    known_rates,
    pass_flops,
    seconds,
    stage_work,
)
from inflection_layers.precision import machine_key, median_seconds, recall, remember, resolve

LONG = 30 * 60  # above this, a first look with the quick profile is suggested
PROBE_TOKENS = 32  # tokens per sentence of the probe's batches


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """FLOP/s of one large (n x n) @ (n x n) matrix product in `dtype` on this machine: the throughput nothing beats."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, 3)


def start_seconds() -> float:
    """Wall seconds of a stage's start: a fresh Python importing torch, transformers and peft."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, peft"], check=True)
    return time.perf_counter() - t0


def probe_batch(ids: list[list[int]], labels: list[int], size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The probe's training batch: its first `size` sentences of PROBE_TOKENS tokens, with their labels."""
    return {
        "input_ids": torch.tensor(ids[:size], device=device),
        "attention_mask": torch.ones(size, PROBE_TOKENS, dtype=torch.long, device=device),
        "labels": torch.tensor(labels[:size], device=device),
    }


def eval_batch(ids: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """The probe's evaluation batch: 128 sentences of PROBE_TOKENS tokens, no labels."""
    return {
        k: torch.tensor(ids[:128], device=device)
        if k == "input_ids"
        else torch.ones(128, PROBE_TOKENS, dtype=torch.long, device=device)
        for k in ("input_ids", "attention_mask")
    }


def train_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: Any) -> float:
    """Median seconds of a training step on the batch (AdamW, constant schedule, clipped gradients)."""
    from inflection_layers.training import make_optimizer, make_scheduler, train_step

    opt = make_optimizer(model, 1e-5, 0.0)
    sched = make_scheduler(opt, "constant", 10**6, 0.0)
    return median_seconds(
        lambda: train_step(lambda b: model(**b).loss, batch, opt, sched, precision=precision, max_grad_norm=1.0, step=0)
    )


def measure_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Median seconds of a diagnostic pass on the batch (the measurement, then the gradients cleared)."""
    from inflection_layers.diagnostics import measure

    def diagnostic() -> None:
        measure(model, batch)
        model.zero_grad(set_to_none=True)

    return median_seconds(diagnostic)


def forward_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: Any) -> float:
    """Median seconds of an evaluation pass (no gradients) on the batch in the precision."""

    def forward() -> None:
        with torch.no_grad(), precision.autocast():
            model(**batch)

    return median_seconds(forward)


def probe_rates(params: Any) -> dict[str, float]:
    """Achieved FLOP/s of a training step, an evaluation pass and a diagnostic pass at the study's batch size, the
    large-shape matrix-product peak, and a stage's start-up, on this machine and in the resolved precision."""
    from inflection_layers.modeling import load_model, pick_device
    from inflection_layers.training import probe_step

    device = pick_device()
    model = load_model(params.model.name).to(device)
    config, B = model.config.to_dict(), params.finetune.batch_size
    ids = [[101] + [2000 + i for i in range(PROBE_TOKENS - 2)] + [102]] * max(B, 128)
    labels = [i % 2 for i in range(len(ids))]
    precision = resolve(params.model.precision, device, params.model.name, probe_step(model, ids, labels, 0, B, device))
    batch = probe_batch(ids, labels, B, device)
    t_train = train_seconds(model, batch, precision)
    t_measure = measure_seconds(model, batch)
    t_forward = forward_seconds(model, eval_batch(ids, device), precision)
    tokens = B * PROBE_TOKENS
    rates = {
        "train": pass_flops(config, tokens, PROBE_TOKENS, "train", 0, 1.0) / t_train,
        "forward": pass_flops(config, 128 * PROBE_TOKENS, PROBE_TOKENS, "forward") / t_forward,
        "measure": pass_flops(config, tokens, PROBE_TOKENS, "measure") / t_measure,
        "peak": matmul_peak(torch.bfloat16 if precision.name == "bf16" else torch.float32),
        "start": start_seconds(),
        "precision": precision.name,
    }
    rates["extra"] = rates["peak"] / 2  # SAE, probe and CKA products: large, dense, about half the peak
    remember(CACHE, f"{machine_key(params.model.name)}|{precision.name}", rates)
    return rates


def rates_here(params: Any) -> dict:
    """This machine's rates for the study's model in the precision its stages will resolve: kept, or probed now."""
    requested = params.model.precision
    decided = (
        requested
        if requested != "auto"
        else (recall("precision.json", machine_key(params.model.name)) or {}).get("name")
    )
    if not torch.cuda.is_available() and decided and (known := known_rates(params.model.name, decided)):
        return known
    return probe_rates(params)


def token_stats(params: Any) -> Tokens:
    """Mean tokens per sentence and sentence counts of every table the stages read, from the data as `prepare`
    selects it."""
    from inflection_layers.data import load_splits, select_tables
    from inflection_layers.modeling import load_tokenizer

    splits, _, _ = load_splits(params.data, params.study.targets)
    tables = select_tables(splits, params.data, params.study.targets)
    tok = load_tokenizer(params.model.name)
    mean = {}
    for name, df in tables.items():
        sample = df["text"].iloc[:2000].tolist()
        mean[name] = statistics.fmean(
            len(x) for x in tok(sample, truncation=True, max_length=params.model.max_length)["input_ids"]
        )
    return Tokens(mean, {n: len(df) for n, df in tables.items()})


def composed(overrides: list[str]) -> Any:
    """The params `dvc exp run -S ...` would compose (the default profile and the overrides)."""
    import yaml
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("inflection_layers.conf", version_base=None):
        return parse_params(yaml.safe_load(OmegaConf.to_yaml(compose(config_name="config", overrides=overrides))))


def stale_stages() -> list[str]:
    """The stages `dvc status` lists as changed in this workspace."""
    out = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True, check=True).stdout
    return sorted(json.loads(out or "{}"))


def table(params: Any, stages: list[str], rates: dict, tok: Tokens, config: dict) -> tuple[list[str], float, float]:
    """One line per stage name (matrix items summed), and the totals (estimate, floor)."""
    rows: dict[str, tuple[int, Work]] = {}
    for stage in stages:
        name = stage.partition("@")[0]
        n, w = rows.get(name, (0, Work(starts=0)))
        rows[name] = (n + 1, w + stage_work(params, config, tok, stage))
    lines = [f"{'stage':16} {'runs':>4} {'estimate':>14} {'floor':>10}"]
    total = floor = 0.0
    for name, (n, w) in rows.items():
        est, low = seconds(w, rates), floor_seconds(w, rates["peak"])
        total, floor = total + est, floor + low
        lines.append(f"{name:16} {n:4d} {describe(est):>14} {describe(low):>10}")
    return lines, total, floor


def main() -> None:
    """Print the estimate of the stale stages (or, with -S, of a composed profile's whole pipeline)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value, as dvc exp run -S")
    args = parser.parse_args()
    params = composed(args.overrides) if args.overrides else load_params()
    stages = all_stages(params) if args.overrides else stale_stages()
    if not stages:
        print("estimate: every stage is up to date; `dvc repro` will run nothing")
        return
    config = model_config(params.model.name)
    tok = token_stats(params)
    rates = rates_here(params)
    lines, total, floor = table(params, stages, rates, tok, config)
    print(f"estimate for profile {params.study.profile} ({len(stages)} stages, {rates['precision']}, this machine):")
    print("\n".join("  " + line for line in lines))
    print(
        f"  {'total':16} {'':4} {describe(total):>14} {describe(floor):>10} "
        "(floor: the FLOPs at this machine's matrix-product peak)"
    )
    if total > LONG and params.study.profile != "quick":
        print("  over 30 minutes: for a first look, `dvc exp run -S profile=quick` (docs/profiles.md)")


if __name__ == "__main__":
    run_main(main)
