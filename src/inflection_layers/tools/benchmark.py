"""Benchmark (not a test): the fine-tuning engine's choices, each measured side by side in one run on this machine.

Run from the repository root after `dvc repro prepare`:
    python -m inflection_layers.tools.benchmark [--only a b ...] [--base] [--dvc]
It prints, on the same model, data and batches:
  (a) precision: a training step in bf16 autocast against fp32, with the loss difference, and what
      `model.precision: auto` resolves to here (and why);
  (b) attention kernel: SDPA against eager, for a training step and for evaluation;
  (c) frozen encoder: the `head` strategy on features computed once against recomputing the encoder
      at every step;
  (d) diagnostics: a step with the eval-mode measurement against without;
  (e) the total: real (non-pad) tokens per second of one group's plain fine-tuning work with this engine
      against the first engine (eager attention everywhere, fp32, the encoder recomputed for `head`);
  (h) a group's peft cells (LoRA at the SKI band, every layer, random bands, the top band and the rivals; IA3)
      trained in lockstep from a shared trunk, and with the LoRA cells stacked into one pass, against one by one;
  (i) the distance from the limit: achieved FLOP/s of a training step (a frozen-encoder LoRA cell and `full`)
      as a fraction of this machine's large-shape matrix-product throughput, in fp32 and in the resolved
      precision; the default study's FLOPs over that throughput (its floor) beside its estimate;
  (k) the `features` stage's sparse autoencoder (k active dictionary rows, b_dec folded into the encoder's bias)
      against the first implementation's dense decoder: training and scoring at quick's sizes, with both FVUs;
  (f) with --base, a training step of the 12-layer base encoder (packaged-base) beside MiniLM's;
  (g) with --dvc, the wall time of a no-op `dvc repro` and the number of stages it ran;
  (j) with `--only j`, each stage script's start-up: process start to parsed arguments (`--help`), and whether
      it imported torch, beside a bare Python and a bare `import torch`.
torch.compile and the optimizer's kernels were measured by hand (docs/speed.md): the fused AdamW pays and is used;
torch.compile's compile time is more than it saves within a stage.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inflection_layers.archs import arch, model_config
from inflection_layers.artifacts import read_parquet
from inflection_layers.config import load_params
from inflection_layers.diagnostics import measure
from inflection_layers.errors import run_main
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.precision import BF16_CPU_FLAGS, Precision, bf16_cpu_flags, cpu_info, resolve
from inflection_layers.strategies import apply_strategy
from inflection_layers.tools.sae_speed import sae_speed
from inflection_layers.tools.startup import noop_repro, startup
from inflection_layers.training import (
    batch_stream,
    collate,
    make_optimizer,
    make_scheduler,
    predict,
    probe_step,
    to_device,
    tokenize,
    train_step,
)

FP32 = Precision("fp32", "cpu", "benchmark")
BF16 = Precision("bf16", "cpu", "benchmark")


def median_time(fn: Callable[[int], None], n: int, warmup: int = 2) -> float:
    """Median seconds per call of fn(i) over n calls after `warmup` calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Bench:
    """One model, tokenised RT data and one batch stream, shared by every comparison."""

    def __init__(self, model_name: str, data: Path, steps: int, batch_size: int, lora) -> None:
        self.device = pick_device()
        self.name, self.lora, self.steps = model_name, lora, steps
        rt = read_parquet(data / "rt_train.parquet", ["text", "label"])
        ev = read_parquet(data / "rt_validation.parquet", ["text", "label"])
        self.tokenizer = load_tokenizer(model_name)
        self.ids, self.labels = tokenize(self.tokenizer, rt["text"], 128), rt["label"].tolist()
        self.eval_ids = tokenize(self.tokenizer, ev["text"], 128)[:256]
        self.pad = self.tokenizer.pad_token_id
        self.stream = batch_stream([len(x) for x in self.ids], batch_size, 0, steps + 2)

    def model(self, strategy: str = "full", attn: str | None = None) -> torch.nn.Module:
        seed_everything(0)
        model = load_model(self.name, attn=attn)
        layers = [2, 4, 5] if strategy.startswith("lora") else None
        return apply_strategy(model, strategy, shallow_k=2, lora=self.lora, layers=layers).to(self.device).train()

    def batch(self, i: int) -> dict[str, torch.Tensor]:
        return to_device(collate(self.ids, self.stream[i % len(self.stream)], self.pad, self.labels), self.device)

    def stepper(self, model: torch.nn.Module, precision: Precision, diag: bool = False) -> Callable[[int], None]:
        opt = make_optimizer(model, 2e-5, 0.01)
        sched = make_scheduler(opt, "constant", 10**6, 0.0)

        def step(i: int) -> None:
            batch = self.batch(i)
            if diag:
                measure(model, batch)
                opt.zero_grad(set_to_none=True)
            train_step(lambda b: model(**b).loss, batch, opt, sched, precision=precision, max_grad_norm=1.0, step=i)

        return step

    def tokens(self, n: int) -> int:
        return sum(len(self.ids[j]) for i in range(n) for j in self.stream[i])


def head_cell(b: Bench, model: torch.nn.Module, precision: Precision, frozen: bool) -> tuple[float, int]:
    """Seconds and real tokens of the `head` cell's training: on features computed once (`frozen`), or the encoder
    at every step."""
    t0 = time.perf_counter()
    model = apply_strategy(model, "head", shallow_k=2)
    opt = make_optimizer(model, 1e-3, 0.01)
    sched = make_scheduler(opt, "constant", 10**6, 0.0)
    head = arch(model).head_forward
    if not frozen:
        for i in range(b.steps):
            train_step(
                lambda d: model(**d).loss, b.batch(i), opt, sched, precision=precision, max_grad_norm=None, step=i
            )
        return time.perf_counter() - t0, b.tokens(b.steps)
    used = sorted({j for i in range(b.steps) for j in b.stream[i]})
    feats = dict(
        zip(
            used,
            torch.from_numpy(
                predict(model, [b.ids[j] for j in used], 128, b.pad, b.device, precision, head_input=True)["head_input"]
            ),
            strict=False,
        )
    )
    for i in range(b.steps):
        idx = b.stream[i]
        batch = {"x": torch.stack([feats[j] for j in idx]), "y": torch.tensor([b.labels[j] for j in idx])}
        train_step(
            lambda d: F.cross_entropy(head(model, d["x"]), d["y"]),
            batch,
            opt,
            sched,
            precision=precision,
            max_grad_norm=1.0,
            step=i,
        )
    return time.perf_counter() - t0, sum(len(b.ids[j]) for j in used)


def group_work(b: Bench, new: bool, precision: Precision) -> tuple[float, int]:
    """Seconds and real tokens of one group's work: none + head (frozen encoder), full, shallow, lora_selective;
    each trains `steps` steps and evaluates."""
    attn = None if new else "eager"
    t0, tokens = time.perf_counter(), 0
    model = b.model("none", attn).eval()
    predict(model, b.eval_ids, 128, b.pad, b.device, precision, head_input=new)
    tokens += sum(len(x) for x in b.eval_ids)
    _, head_tokens = head_cell(b, model, precision, frozen=new)
    tokens += head_tokens
    for strategy in ("full", "shallow", "lora_selective"):
        model = b.model(strategy, attn)
        step = b.stepper(model, precision)
        for i in range(b.steps):
            step(i)
        tokens += b.tokens(b.steps)
        predict(model, b.eval_ids, 128, b.pad, b.device, precision)
        tokens += sum(len(x) for x in b.eval_ids)
    return time.perf_counter() - t0, tokens


def precision_step(b: Bench, params) -> Precision:
    """(a) bf16 autocast against fp32 on a `full` step; returns the precision the engine works in."""
    model = b.model()
    auto = resolve(
        "auto",
        b.device,
        params.model.name,
        probe_step(model, b.ids, b.labels, b.pad, params.finetune.batch_size, b.device),
    )
    t32 = median_time(b.stepper(b.model(), FP32), b.steps)
    t16 = median_time(b.stepper(b.model(), BF16), max(3, b.steps // 2))
    with torch.no_grad():
        model.eval()
        batch = b.batch(0)
        l32 = model(**batch).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            l16 = model(**batch).loss.item()
    print(
        f"\n(a) precision, step of `full`: fp32 {t32:.3f} s, bf16 {t16:.3f} s: bf16 is {t32 / t16:.2f}x fp32's speed; "
        f"|loss bf16 - fp32| on one batch {abs(l16 - l32):.1e}\n    auto resolves to {auto.name}: {auto.reason}"
    )
    return auto if auto.name == "bf16" else FP32


def attention_kernels(b: Bench, work: Precision) -> None:
    """(b) SDPA against eager attention, a training step and an evaluation."""
    t_eager = median_time(b.stepper(b.model(attn="eager"), work), b.steps)
    t_sdpa = median_time(b.stepper(b.model(attn=None), work), b.steps)
    ev_model = {impl: b.model("none", impl).eval() for impl in ("eager", None)}
    e_eager, e_sdpa = (
        median_time(lambda i, m=m: predict(m, b.eval_ids, 128, b.pad, b.device, work), 3, 1) for m in ev_model.values()
    )
    print(
        f"\n(b) attention kernel: training step eager {t_eager:.3f} s, SDPA {t_sdpa:.3f} s "
        f"({t_eager / t_sdpa:.2f}x); evaluation of {len(b.eval_ids)} sentences eager {e_eager:.2f} s, "
        f"SDPA {e_sdpa:.2f} s ({e_eager / e_sdpa:.2f}x)"
    )


def frozen_and_diagnostics(b: Bench, work: Precision, every: int) -> None:
    """(c) `head` on features computed once against the encoder at every step; (d) the cost of a diagnostic step."""
    recompute = statistics.median(head_cell(b, b.model("none").eval(), work, frozen=False)[0] for _ in range(3))
    once = statistics.median(head_cell(b, b.model("none").eval(), work, frozen=True)[0] for _ in range(3))
    print(
        f"\n(c) frozen encoder: the `head` cell's {b.steps} steps recomputing the encoder {recompute:.2f} s, "
        f"on features computed once {once:.2f} s ({recompute / once:.2f}x; median of 3)"
    )
    t_off = median_time(b.stepper(b.model(), work), b.steps)
    t_on = median_time(b.stepper(b.model(), work, diag=True), max(3, b.steps // 2))
    print(
        f"\n(d) diagnostics: step {t_off:.3f} s without, {t_on:.3f} s with the measurement "
        f"({t_on / t_off:.2f}x on a diagnostic step; "
        f"{1 + (t_on / t_off - 1) / every:.3f}x amortised at diag_every {every})"
    )


def total(b: Bench, work: Precision) -> None:
    """(e) one group's plain work with this engine against the first engine, alternated in one run."""
    t_old, tok = group_work(b, new=False, precision=FP32)
    t_new, tok_new = group_work(b, new=True, precision=work)
    print(
        f"\n(e) total, one group's work ({b.steps} steps per trained cell, "
        f"{len(b.eval_ids)} evaluation sentences per cell):\n"
        f"    first engine {t_old:.1f} s ({tok / t_old:,.0f} real tokens/s); "
        f"this engine {t_new:.1f} s ({tok_new / t_new:,.0f} real "
        f"tokens/s): {(tok_new / t_new) / (tok / t_old):.2f}x"
    )


BENCH_SELECTION = {"band": [3, 4, 5], "top": [3, 4, 5], "complement": [0, 1, 2], "rgn": [1, 4, 5], "cka": [0, 4, 5]}


def lockstep(b: Bench, params, work: Precision) -> None:
    """(h) a group's peft cells one by one, in lockstep from a shared trunk, and with the LoRA cells stacked."""
    from inflection_layers.adapt import GroupData, build_run, evaluate_runs, make_trunk_model, train_runs
    from inflection_layers.bands import random_bands
    from inflection_layers.cells import Group, expand

    draws = params.ski.random_draws if params.ski.random_draws != "all" else None
    selection = BENCH_SELECTION | {"random": random_bands(6, [3, 4, 5], draws, np.random.default_rng(0))}
    names = [s for s in expand(params.study.peft_strategies, len(selection["random"])) if s != "prefix"]
    data = GroupData(b.ids, b.labels, b.stream[: b.steps], None, b.eval_ids, b.pad)
    p = replace(
        params, finetune=replace(params.finetune, steps=b.steps), analysis=replace(params.analysis, strategies=["none"])
    )
    group, source = Group("rt", "over", 0), Path(params.model.name)

    def timed(together: bool, per_pass: int = 1) -> float:
        runs = [build_run(p, group, s, source, selection, b.device) for s in names]
        t0 = time.perf_counter()
        if together:
            trunk = make_trunk_model(source, b.device)
            train_runs(runs, p, data, b.device, work, trunk, per_pass)
            evaluate_runs(runs, p, data, b.device, work, trunk)
        else:
            for r in runs:
                train_runs([r], p, data, b.device, work)
                evaluate_runs([r], p, data, b.device, work)
        return time.perf_counter() - t0

    alone, shared, stacked = timed(False), timed(True), timed(True, len(names))
    print(
        f"\n(h) {len(names)} peft cells of a group (SKI band [3, 4, 5]; {len(selection['random'])} random bands), "
        f"{b.steps} steps and an evaluation of {len(b.eval_ids)} sentences each:"
        f"\n    one by one {alone:.1f} s; lockstep with the shared trunk {shared:.1f} s ({alone / shared:.2f}x); "
        f"LoRA cells stacked into one pass {stacked:.1f} s ({alone / stacked:.2f}x)"
    )


def limit(b: Bench, params, work: Precision) -> None:
    """(i) achieved FLOP/s of training steps as a fraction of the machine's matrix-product peak; the study's floor."""
    from inflection_layers.estimate import Tokens, all_stages, describe, floor_seconds, pass_flops, seconds, stage_work
    from inflection_layers.tools.estimate import composed, matmul_peak, rates_here, token_stats

    config = model_config(params.model.name)
    batch_tokens = [sum(len(b.ids[j]) for j in b.stream[i]) for i in range(b.steps)]
    mean_len = sum(batch_tokens) / sum(len(b.stream[i]) for i in range(b.steps))
    lines = []
    for prec in [FP32, work] if work.name != "fp32" else [FP32]:
        peak = matmul_peak(torch.bfloat16 if prec.name == "bf16" else torch.float32)
        for strategy, first, weights in (("lora_selective", 3, 0.0), ("full", 0, 1.0)):
            t = median_time(b.stepper(b.model(strategy), prec), b.steps)
            flops = pass_flops(config, statistics.fmean(batch_tokens), mean_len, "train", first, weights)
            lines.append(
                f"{prec.name} {strategy}: {flops / t / 1e9:.0f} GFLOP/s = {flops / t / peak:.0%} "
                f"of the {peak / 1e9:.0f} GFLOP/s peak"
            )
    default = composed([])
    tok: Tokens = token_stats(default)
    rates = rates_here(default)
    w = [stage_work(default, config, tok, s) for s in all_stages(default)]
    est, low = sum(seconds(x, rates) for x in w), sum(floor_seconds(x, rates["peak"]) for x in w)
    print(
        "\n(i) distance from the limit:\n    "
        + "\n    ".join(lines)
        + f"\n    the default study: estimate {describe(est)}, floor {describe(low)} "
        f"(its FLOPs at the {rates['precision']} peak)"
    )


def main() -> None:
    """Print every comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list("abcdehijk"),
        default=list("abcdehik"),
        help="measurements to run (j: start-up)",
    )
    parser.add_argument(
        "--base", action="store_true", help="also time the 12-layer base encoder (assembles it if needed)"
    )
    parser.add_argument("--dvc", action="store_true", help="also time a no-op `dvc repro` (after a complete run)")
    args = parser.parse_args()
    params = load_params()
    b = Bench(params.model.name, args.data, args.steps, params.finetune.batch_size, params.lora)
    cpu, flags = cpu_info()[0], bf16_cpu_flags()
    print(
        f"{cpu or 'unknown CPU'}, bf16 flags {flags or 'none'}; device {b.device.type}, "
        f"{torch.get_num_threads()} threads; model {params.model.name}; batch {params.finetune.batch_size}; "
        f"{args.steps} timed steps per variant"
    )
    work = (
        precision_step(b, params) if "a" in args.only else resolve(params.model.precision, b.device, params.model.name)
    )
    steps = {
        "b": lambda: attention_kernels(b, work),
        "c": lambda: frozen_and_diagnostics(b, work, params.finetune.diag_every),
        "e": lambda: total(b, work),
        "h": lambda: lockstep(b, params, work),
        "i": lambda: limit(b, params, work),
        "k": lambda: sae_speed(model_config(params.model.name)["hidden_size"], params.features),
    }
    for key, step in steps.items():
        if key in args.only:
            step()
    if args.base:
        base_model(args, params, flags)
    if args.dvc:
        noop_repro()
    if "j" in args.only:
        startup()


def base_model(args: argparse.Namespace, params, flags: list[str]) -> None:
    """(f) a training step of the 12-layer base encoder beside the study's model, in fp32 and (on bf16 hardware)
    bf16."""
    for name in (params.model.name, "packaged-base"):
        base = Bench(name, args.data, args.steps, params.finetune.batch_size, params.lora)
        kinds = (FP32, BF16) if base.device.type == "cuda" or flags else (FP32,)
        times = {p.name: median_time(base.stepper(base.model(), p), max(3, args.steps // 2)) for p in kinds}
        bf16 = (
            f"bf16 {times['bf16']:.3f} s" if "bf16" in times else f"bf16 not timed (no {' or '.join(BF16_CPU_FLAGS)})"
        )
        print(f"\n(f) {name}: training step at batch {params.finetune.batch_size}: fp32 {times['fp32']:.3f} s, {bf16}")


if __name__ == "__main__":
    run_main(main)
