"""Benchmark (not a test): our fine-tuning step against a plain Trainer-style step, and the cost of diagnostics.

Run from the repository root after `dvc repro prepare`:  python -m inflection_layers.benchmark
It prints, from one run on the same model and data, side by side:
  (a) real (non-pad) tokens per second of our step (length-bucketed batches, dynamic padding, fused
      AdamW) against a straightforward Hugging Face Trainer-style step (random batches padded to
      `model.max_length`, eager attention, foreach AdamW);
  (b) step time with diagnostics (attention entropy + activation-gradient hooks, backward through
      every layer) against without, for `full` and `lora_selective` on layers [2, 4, 5];
  (c) with --dvc, the wall time of a no-op `dvc repro` and the number of stages it ran;
  (d) on CPU, bf16 autocast against fp32 (step time, and the loss difference on the same batch);
  (e) why the fine-tuning stages run their cells one after the other with every thread: the same
      two cells in two parallel processes, each with an equal share of the threads, for comparison.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed

from inflection_layers.artifacts import read_parquet
from inflection_layers.config import load_params
from inflection_layers.diagnostics import measure
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.strategies import apply_strategy
from inflection_layers.training import bucketed_batches, collate, make_optimizer, to_device, tokenize


def timed(step: Callable[[int], int], n: int, warmup: int = 2) -> tuple[float, int]:
    """Median seconds per call of step(i) over n calls after `warmup`, and the real tokens processed."""
    for i in range(warmup):
        step(i)
    times, tokens = [], 0
    for i in range(warmup, warmup + n):
        t0 = time.perf_counter()
        tokens += step(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), tokens // n


def padded_batches(n_examples: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Trainer-style: uniformly shuffled batches, no length grouping."""
    order = np.random.default_rng(seed).permutation(n_examples)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cell_steps(model_name: str, ids: list[list[int]], labels: list[int], pad: int, batch_size: int, steps: int, threads: int) -> float:
    """Seconds for `steps` full fine-tuning steps of a fresh model with `threads` torch threads (one cell's work)."""
    torch.set_num_threads(threads)
    seed_everything(0)
    model = load_model(model_name).train()
    opt = make_optimizer(model, 2e-5, 0.01)
    batches = bucketed_batches([len(x) for x in ids], batch_size, seed=0, epoch=0)
    t0 = time.perf_counter()
    for i in range(steps):
        model(**collate(ids, batches[i], pad, labels)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    """Print the side-by-side comparisons."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--dvc", action="store_true", help="also time a no-op `dvc repro` (after a complete run)")
    args = parser.parse_args()
    params = load_params()
    device = pick_device()
    p = params.finetune
    rt = read_parquet(args.data / "rt_train.parquet", ["text", "label"])
    tokenizer = load_tokenizer(params.model.name)
    ids = tokenize(tokenizer, rt["text"], params.model.max_length)
    labels = rt["label"].tolist()
    pad = tokenizer.pad_token_id

    def fresh(strategy: str = "full") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        seed_everything(0)
        model = load_model(params.model.name)
        model = apply_strategy(model, strategy, lora=params.lora, layers=[2, 4, 5] if strategy.startswith("lora") else None).to(device).train()
        return model, make_optimizer(model, p.lr, p.weight_decay)

    def stepper(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[np.ndarray], pad_to: int | None, diag: bool) -> Callable[[int], int]:
        def step(i: int) -> int:
            batch = collate(ids, batches[i % len(batches)], pad, labels)
            if pad_to is not None:  # pad every batch to the maximum length, as `padding="max_length"` does
                extra = pad_to - batch["input_ids"].shape[1]
                batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad)
                batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)
            batch = to_device(batch, device)
            if diag:
                measure(model, batch)
            else:
                model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return int(batch["attention_mask"].sum())

        return step

    print(f"device {device.type}, threads {torch.get_num_threads()}, model {params.model.name}, batch {p.batch_size}, {args.steps} timed steps each")
    ours_batches = bucketed_batches([len(x) for x in ids], p.batch_size, seed=0, epoch=0)
    model, _ = fresh()
    baseline_opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=p.lr, foreach=True)
    t_base, tok_base = timed(stepper(model, baseline_opt, padded_batches(len(ids), p.batch_size, 0), params.model.max_length, False), args.steps)
    model, opt = fresh()
    t_ours, tok_ours = timed(stepper(model, opt, ours_batches, None, False), args.steps)
    print("\n(a) fine-tuning step, strategy full          s/step   real tokens/s")
    print(f"    Trainer-style (pad to {params.model.max_length}, eager)      {t_base:7.3f}   {tok_base / t_base:10.0f}")
    print(f"    ours (bucketed, dynamic padding)       {t_ours:7.3f}   {tok_ours / t_ours:10.0f}")
    print(f"    speed-up in tokens/s: {(tok_ours / t_ours) / (tok_base / t_base):.2f}x (goal >= 2x)")

    print("\n(b) diagnostics on vs off                    off s/step   on s/step   ratio")
    for strategy in ("full", "lora_selective"):
        model, opt = fresh(strategy)
        t_off, _ = timed(stepper(model, opt, ours_batches, None, False), args.steps)
        t_on, _ = timed(stepper(model, opt, ours_batches, None, True), args.steps)
        print(f"    {strategy:<16}                      {t_off:9.3f}   {t_on:9.3f}   {t_on / t_off:5.2f}x")
    print(f"    with diagnostics every {p.diag_every} steps the amortised cost per step is at most 1 + (ratio - 1) / {p.diag_every}")

    if device.type == "cpu":
        print("\n(d) bf16 autocast on CPU vs fp32, strategy full    s/step   loss on one batch")
        model, opt = fresh()
        batch = collate(ids, ours_batches[0], pad, labels)
        losses = {}
        for name, ctx in (("fp32", None), ("bf16", torch.bfloat16)):
            def step(i: int, ctx: torch.dtype | None = ctx) -> int:
                b = collate(ids, ours_batches[i % len(ours_batches)], pad, labels)
                with torch.autocast("cpu", dtype=ctx, enabled=ctx is not None):
                    loss = model(**b).loss
                loss.backward()
                model.zero_grad(set_to_none=True)
                return int(b["attention_mask"].sum())
            t, _ = timed(step, max(3, args.steps // 3))
            with torch.no_grad(), torch.autocast("cpu", dtype=ctx, enabled=ctx is not None):
                losses[name] = model(**batch).loss.item()
            print(f"    {name}                                          {t:7.3f}   {losses[name]:.5f}")
        print(f"    |loss bf16 - fp32| = {abs(losses['bf16'] - losses['fp32']):.2e}; the stages use bf16 only on a GPU")

        cpus = os.cpu_count() or 1
        n = args.steps
        t_seq = sum(cell_steps(params.model.name, ids, labels, pad, p.batch_size, n, cpus) for _ in range(2))
        t0 = time.perf_counter()
        Parallel(n_jobs=2)(delayed(cell_steps)(params.model.name, ids, labels, pad, p.batch_size, n, max(1, cpus // 2)) for _ in range(2))
        t_par = time.perf_counter() - t0
        print(f"\n(e) two cells of {n} full steps: one after the other with {cpus} threads {t_seq:.1f} s;")
        print(f"    in 2 processes x {max(1, cpus // 2)} thread(s) {t_par:.1f} s (process start included): {t_seq / t_par:.2f}x")

    if args.dvc:
        t0 = time.perf_counter()
        out = subprocess.run(["dvc", "repro"], capture_output=True, text=True, check=True).stdout
        ran = len(re.findall(r"^Running stage", out, flags=re.M))
        print(f"\n(c) no-op `dvc repro`: {time.perf_counter() - t0:.1f} s, {ran} stages ran (goal: < 5 s, 0 stages)")


if __name__ == "__main__":
    main()
