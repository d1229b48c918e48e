"""Adaptation of one group's cells, shared by the three `finetune` stages and the learning-rate sweep.

Every cell of a group trains `finetune.steps` steps on the same batches in the same order (a paired design).
A :class:`CellRun` is one cell being trained: its model, the layers it adapts, its first modified layer, its
schedule of diagnostics and, for the intervention cells, its attention-temperature knob. :func:`train_runs`
trains a list of them in lockstep (one step of every cell per batch; :mod:`inflection_layers.lockstep` shares
what is identical across them); :func:`evaluate_runs` evaluates them the same way. `none` and `head` share
one pass of the frozen encoder (:mod:`inflection_layers.frozen`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from inflection_layers.artifacts import read_parquet
from inflection_layers.cells import LORA_STRATEGIES, Cell, Group, family, kind
from inflection_layers.config import Params
from inflection_layers.diagnostics import measure
from inflection_layers.lockstep import compute_trunk, stacked_losses, stubbed
from inflection_layers.modeling import load_model, seed_everything
from inflection_layers.precision import MIN_SPEEDUP, Precision, machine_key, median_seconds, recall, remember
from inflection_layers.strategies import adapted_layers, apply_strategy
from inflection_layers.temperature import AttentionTemperature, anneal
from inflection_layers.training import (
    accuracy_and_loss,
    batch_stream,
    check_finite,
    collate,
    eval_batches,
    iterate,
    make_optimizer,
    make_scheduler,
    predict,
    to_device,
    tokenize,
    train_step,
    update,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupData:
    """One group's tokenised data: the train split, its batch stream, the evaluation splits (the analysis sample)."""

    train_ids: list[list[int]]
    train_labels: list[int]
    stream: list[np.ndarray]  # (steps,) batches of train indices, the same for every strategy
    eval_frame: pd.DataFrame  # id, split, label
    eval_ids: list[list[int]]
    pad: int


def load_group_data(data_dir: Path, group: Group, params: Params, tokenizer: Any) -> GroupData:
    """Read and tokenise the target's train split and evaluation splits once for every cell of a group."""
    p = params.finetune
    train = read_parquet(data_dir / f"{group.target}_train.parquet", ["text", "label"])
    frames = [
        read_parquet(data_dir / f"{group.target}_{split}.parquet", ["id", "text", "label"]).assign(split=split)
        for split in p.eval_splits
    ]
    ev = pd.concat(frames, ignore_index=True)
    ids = tokenize(tokenizer, train["text"], params.model.max_length)
    stream = batch_stream([len(x) for x in ids], p.batch_size, group.seed, p.steps)
    eval_ids = tokenize(tokenizer, ev["text"], params.model.max_length)
    return GroupData(
        ids, train["label"].tolist(), stream, ev[["id", "split", "label"]], eval_ids, tokenizer.pad_token_id
    )


def score(frame: pd.DataFrame, probs: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Predictions (id, split, label, prob_pos, pred) and accuracy, loss and size per evaluation split."""
    pred = frame.assign(prob_pos=probs[:, 1], pred=probs.argmax(1))
    scores = {}
    for split, rows in pred.groupby("split", sort=False).groups.items():
        acc, loss = accuracy_and_loss(probs[rows], pred.loc[rows, "label"].tolist())
        scores |= {f"{split}_accuracy": acc, f"{split}_loss": loss, f"{split}_n": len(rows)}
    return pred, scores


def diagnostic_steps(steps: int, every: int, window: int = 0, window_every: int = 1) -> set[int]:
    """The steps whose batch is also measured: 0, every `every`, the last; each `window_every` in the first `window`."""
    return set(range(0, steps, every)) | {steps - 1} | set(range(0, min(window, steps), window_every))


@dataclass
class CellRun:
    """One cell being trained: its model and what the loops need to know about it."""

    cell: Cell
    model: nn.Module
    layers: list[int]  # the encoder layers it adapts ([] for plain cells)
    first: int | None  # its lowest layer that differs from the source model; None: it trains its embeddings
    lr: float
    diag: set[int]  # the steps whose batch is also measured
    knob: AttentionTemperature | None = None
    eval_step: int | None = None  # the knob's step at evaluation (anneal: the end of the window, tau = 1)
    optimizer: Any = None
    scheduler: Any = None
    records: list = dataclasses.field(default_factory=list)
    curve: list = dataclasses.field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    def temperature(self) -> dict | None:
        """What the knob does, for the cell's metrics: where, tau at the first step, and in evaluation."""
        if self.knob is None:
            return None
        at_eval = self.knob.schedule(self.eval_step if self.eval_step is not None else 0)
        return {"layers": self.knob.layers, "tau_first_step": self.knob.schedule(0), "tau_evaluation": at_eval}


def knob_of(
    model: nn.Module, strategy: str, params: Params, selection: dict
) -> tuple[AttentionTemperature | None, int | None]:
    """The attention-temperature knob of an intervention cell and its step at evaluation; (None, None) otherwise."""
    p, band = params.intervene, list(selection["band"]) if selection else []
    name = family(strategy)
    if name == "lora_selective_tau":
        return AttentionTemperature(model, band, p.adapt_temperature), None
    if name == "lora_selective_tau_ctrl":
        return AttentionTemperature(model, list(selection["random"][0]["layers"]), p.adapt_temperature), None
    if name == "lora_selective_anneal":
        window = p.window(params.finetune.steps)
        return AttentionTemperature(model, band, anneal(p.anneal_from, window)), window
    return None, None


def build_run(
    params: Params, group: Group, strategy: str, source: Path, selection: dict | None, device: torch.device
) -> CellRun:
    """Load the source model and make it the cell: what trains, its knob, its first modified layer, its diagnostics."""
    p, cell = params.finetune, Cell(group, strategy)
    seed_everything(group.seed)
    model = load_model(str(source))
    layers = adapted_layers(strategy, model.config.num_hidden_layers, selection)
    model = apply_strategy(
        model, strategy, shallow_k=p.shallow_k, lora=params.lora, layers=layers, prefix_tokens=p.prefix_tokens
    ).to(device)
    knob, eval_step = knob_of(model, strategy, params, selection)
    modified = layers + (knob.layers if knob else [])
    first = min(modified) if kind(strategy) != "plain" and family(strategy) != "prefix" else None
    analysed = family(strategy) in params.analysis.strategies
    window = params.intervene.window(p.steps) if kind(strategy) != "plain" else 0
    diag = diagnostic_steps(p.steps, p.diag_every, window, params.intervene.diag_every) if analysed else set()
    return CellRun(cell, model, layers, first, params.lr(strategy), diag, knob, eval_step)


def _record(run: CellRun, step: int, batch: dict) -> None:
    """Eval mode, eager attention, no update: dropout-free diagnostics of the cell's current model on this batch."""
    rec = measure(run.model, batch)
    run.model.zero_grad(set_to_none=True)
    run.records.append(rec)
    grads = {f"act_grad_{i - 1}": float(v) for i, v in enumerate(rec["act_grad"])}
    tau = {"tau": run.knob.tau} if run.knob else {}
    run.curve.append({"step": step, "loss": rec["loss"], "margin": rec["margin"], **tau} | grads)


def _stackable(run: CellRun) -> bool:
    """LoRA cells without a knob can share a pass (IA3, prefix and the intervention cells run alone)."""
    return run.first is not None and run.knob is None and family(run.cell.strategy) in LORA_STRATEGIES


def _chunks(runs: list[CellRun], per_pass: int) -> list[list[CellRun]]:
    """Runs grouped into passes: stackable LoRA cells `per_pass` at a time (by first layer); every other cell alone."""
    stackable = sorted([r for r in runs if _stackable(r)], key=lambda r: r.first)
    alone = [[r] for r in runs if not _stackable(r)]
    return [stackable[i : i + per_pass] for i in range(0, len(stackable), per_pass)] + alone


def uses_trunk(runs: list[CellRun]) -> bool:
    """Whether a shared trunk saves work: at least two cells leave layers to it."""
    return sum(1 for r in runs if r.first) >= 2


def make_trunk_model(source: Path, device: torch.device) -> nn.Module:
    """The frozen source model that computes the shared trunk (and the stacked passes)."""
    model = load_model(str(source)).to(device)
    model.requires_grad_(False)
    return model


def _step(
    chunk: list[CellRun],
    trunk_model: nn.Module | None,
    trunk: list | None,
    batch: dict,
    step: int,
    precision: Precision,
    max_grad_norm: float | None,
) -> None:
    """One optimisation step of the cells of one pass: alone (from the trunk where it has one) or stacked."""
    if len(chunk) == 1:
        run = chunk[0]

        def loss(b: dict) -> torch.Tensor:
            if trunk is None or run.first is None:
                return run.model(**b).loss
            with stubbed(
                run.model, trunk, run.first
            ):  # from layer `first`; even at 0 the embeddings come from the trunk
                return run.model(**b).loss

        train_step(
            loss, batch, run.optimizer, run.scheduler, precision=precision, max_grad_norm=max_grad_norm, step=step
        )
        return
    with precision.autocast():
        losses = stacked_losses(trunk_model, [r.model for r in chunk], trunk, min(r.first for r in chunk), batch)
    for value in losses:
        check_finite(value.item(), step)
    torch.stack(losses).sum().backward()
    for run in chunk:
        update(run.optimizer, run.scheduler, max_grad_norm)


def train_runs(
    runs: list[CellRun],
    params: Params,
    data: GroupData,
    device: torch.device,
    precision: Precision,
    trunk_model: nn.Module | None = None,
    per_pass: int = 1,
) -> None:
    """Train cells in lockstep: at every step each cell takes the same batch; with a trunk model, the layers below
    each cell's first modified layer run once (train mode: the frozen layers' dropout, as a cell alone has it)."""
    p = params.finetune
    for run in runs:
        run.model.train()
        run.optimizer = make_optimizer(run.model, run.lr, p.weight_decay)
        run.scheduler = make_scheduler(run.optimizer, p.schedule, p.steps, p.warmup_ratio)
    depth = max((r.first or 0 for r in runs), default=0)
    trunk_model = trunk_model.train() if trunk_model is not None else None
    chunks = _chunks(runs, per_pass)
    desc = runs[0].cell.name if len(runs) == 1 else f"{runs[0].cell.group.name}: {len(runs)} cells in lockstep"
    for step, idx in enumerate(iterate(data.stream, desc)):
        batch = to_device(collate(data.train_ids, idx, data.pad, data.train_labels), device)
        t0 = time.perf_counter()
        trunk = None
        if trunk_model is not None:
            with precision.autocast():
                trunk = compute_trunk(trunk_model, batch, depth)
        share = (time.perf_counter() - t0) / len(runs)
        for chunk in chunks:
            t0 = time.perf_counter()
            for run in chunk:
                if run.knob is not None:
                    run.knob.step = step
                if step in run.diag:
                    _record(run, step, batch)
            _step(chunk, trunk_model, trunk, batch, step, precision, p.max_grad_norm)
            for run in chunk:
                run.seconds += (time.perf_counter() - t0) / len(chunk) + share
                run.tokens += int(batch["attention_mask"].sum())


@torch.no_grad()
def evaluate_runs(
    runs: list[CellRun],
    params: Params,
    data: GroupData,
    device: torch.device,
    precision: Precision,
    trunk_model: nn.Module | None = None,
) -> dict[str, dict]:
    """Evaluate every cell on the analysis sample, in eval mode, knobs at their evaluation step -> {strategy: predict's
    dict}. Analysed cells keep every hidden state (a full forward); the others start from a shared trunk when given."""
    p, out = params.finetune, {}
    for run in runs:
        run.model.eval()
        if run.knob is not None and run.eval_step is not None:
            run.knob.step = run.eval_step
    analysed = [
        r for r in runs if family(r.cell.strategy) in params.analysis.strategies or trunk_model is None or not r.first
    ]
    for run in analysed:
        ev = predict(run.model, data.eval_ids, p.eval_batch_size, data.pad, device, precision, reps=bool(run.diag))
        out[run.cell.strategy] = ev
    rest = [r for r in runs if r not in analysed]
    if rest:
        depth = max(r.first for r in rest)
        probs = {r.cell.strategy: np.zeros((len(data.eval_ids), r.model.config.num_labels)) for r in rest}
        for idx, batch in eval_batches(data.eval_ids, p.eval_batch_size, data.pad, device):
            with precision.autocast():
                trunk = compute_trunk(trunk_model.eval(), batch, depth)
                for run in rest:
                    with stubbed(run.model, trunk, run.first):
                        logits = run.model(**batch).logits
                    probs[run.cell.strategy][idx] = torch.softmax(logits.double(), -1).cpu().numpy()
        out |= {s: {"probs": v} for s, v in probs.items()}
    return out


def resolve_per_pass(
    requested: int | str,
    runs: list[CellRun],
    trunk_model: nn.Module | None,
    batch: dict,
    precision: Precision,
    model_name: str,
) -> tuple[int, str]:
    """`finetune.cells_per_pass`: a number, or `auto`: stack every LoRA cell into one pass only where a timed probe on
    this machine (kept per machine, model, precision and number of cells) shows it faster; returns (cells, why)."""
    stackable = [r for r in runs if _stackable(r)]
    n = len(stackable)
    if requested != "auto":
        return max(1, min(int(requested), n)), "set by finetune.cells_per_pass"
    if n < 2 or trunk_model is None:
        return 1, "fewer than two LoRA cells could share a pass"
    key = f"{machine_key(model_name)}|{precision.name}|{n} LoRA cells"
    if known := recall("engine.json", key):
        return int(known["cells_per_pass"]), known["reason"] + " (measured once on this machine)"
    cells = stackable

    def one_by_one() -> None:
        with precision.autocast():
            trunk = compute_trunk(trunk_model, batch, max(r.first for r in cells))
            for r in cells:
                with stubbed(r.model, trunk, r.first):
                    r.model(**batch).loss.backward()

    def together() -> None:
        with precision.autocast():
            trunk = compute_trunk(trunk_model, batch, max(r.first for r in cells))
            torch.stack(
                stacked_losses(trunk_model, [r.model for r in cells], trunk, min(r.first for r in cells), batch)
            ).sum().backward()

    with torch.random.fork_rng(devices=[]):  # the probe draws dropout masks: the run's random stream stays untouched
        alone, stacked = median_seconds(one_by_one, 2), median_seconds(together, 2)
    for r in cells:
        r.model.zero_grad(set_to_none=True)
    choice = n if alone / stacked >= MIN_SPEEDUP else 1
    reason = (
        f"a probe step of {n} LoRA cells took {alone:.3f} s one by one and {stacked:.3f} s stacked "
        f"({alone / stacked:.2f}x)"
    )
    remember("engine.json", key, {"cells_per_pass": choice, "reason": reason})
    logger.info("cells per pass %d: %s", choice, reason)
    return choice, reason
