"""Equivalence of the lockstep engine: a cell trained with others (shared trunk, stacked passes) equals the cell alone.

Tiny random BERT, fp32, 20 steps. With dropout off, every cell's diagnostics, losses and predictions match its
solo run within 1e-4 (the logits of a tall matrix product round differently); a saved adapter reproduces its cell's
predictions; with dropout on, a lockstep group is deterministic from run to run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import BertForSequenceClassification

from conftest import params_with, tiny_config
from inflection_layers.adapt import (
    GroupData,
    build_run,
    evaluate_runs,
    make_trunk_model,
    resolve_per_pass,
    train_runs,
    uses_trunk,
)
from inflection_layers.cells import Group
from inflection_layers.finetune import save_model_state
from inflection_layers.precision import Precision
from inflection_layers.training import batch_stream, collate, predict

FP32 = Precision("fp32", "cpu", "test")
GROUP = Group("rt", "over", 7)
SELECTION = {
    "band": [2, 3],
    "top": [2, 3],
    "complement": [0, 1],
    "rgn": [1, 3],
    "cka": [0, 2],
    "random": [{"layers": [1, 2]}, {"layers": [0, 3]}],
}
LORA_CELLS = ["lora_selective", "lora_random_0", "lora_random_1", "lora_top", "lora_rgn", "lora_all"]
DEVICE = torch.device("cpu")


def group_data(n: int = 64, steps: int = 20, batch: int = 4) -> GroupData:
    g = torch.Generator().manual_seed(3)
    ids = [
        [2, *torch.randint(5, 99, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist()]
        for _ in range(n)
    ]
    labels = [i % 2 for i in range(n)]
    frame = pd.DataFrame(
        {"id": [f"e{i}" for i in range(24)], "split": "validation", "label": [i % 2 for i in range(24)]}
    )
    return GroupData(ids, labels, batch_stream([len(x) for x in ids], batch, 7, steps), frame, ids[:24], 0)


def setup(tmp_path: Path, dropout: float = 0.0, **extra: dict) -> tuple:
    config = tiny_config(4)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "source")
    params = params_with(
        finetune={"steps": 20, "batch_size": 4, "diag_every": 10, "eval_batch_size": 8},
        lora={"rank": 2, "alpha": 4, "dropout": dropout},
        intervene={"diag_every": 5, "anneal_steps": 8},
        analysis={"strategies": ["none", "lora_selective", "lora_all", "lora_selective_tau", "lora_selective_anneal"]},
        **extra,
    )
    return params, tmp_path / "source", group_data()


def trained(params, source: Path, data: GroupData, strategies: list[str], together: bool, per_pass: int = 1) -> dict:
    runs = [build_run(params, GROUP, s, source, SELECTION, DEVICE) for s in strategies]
    trunk = make_trunk_model(source, DEVICE) if together and uses_trunk(runs) else None
    if together:
        train_runs(runs, params, data, DEVICE, FP32, trunk, per_pass)
        ev = evaluate_runs(runs, params, data, DEVICE, FP32, trunk)
    else:
        ev = {}
        for run in runs:
            train_runs([run], params, data, DEVICE, FP32)
            ev |= evaluate_runs([run], params, data, DEVICE, FP32)
    return {r.cell.strategy: {"run": r, "probs": ev[r.cell.strategy]["probs"], "curve": r.curve} for r in runs}


def assert_same(a: dict, b: dict, atol: float = 1e-4) -> None:
    for s in a:
        np.testing.assert_allclose(np.log(a[s]["probs"]), np.log(b[s]["probs"]), atol=atol, rtol=0, err_msg=s)
        assert [c["step"] for c in a[s]["curve"]] == [c["step"] for c in b[s]["curve"]], s
        np.testing.assert_allclose(
            [c["loss"] for c in a[s]["curve"]], [c["loss"] for c in b[s]["curve"]], atol=atol, err_msg=s
        )


CELLS = [*LORA_CELLS, "ia3_selective", "lora_selective_tau", "lora_selective_tau_ctrl", "lora_selective_anneal"]


@pytest.mark.slow
def test_lockstep_with_a_shared_trunk_equals_each_cell_alone(tmp_path: Path) -> None:
    params, source, data = setup(tmp_path)
    alone = trained(params, source, data, CELLS, together=False)
    lockstep = trained(params, source, data, CELLS, together=True)
    assert_same(alone, lockstep)
    assert {r["run"].first for r in lockstep.values()} == {0, 1, 2}  # some cells did start from the trunk
    assert [c["step"] for c in lockstep["lora_selective"]["curve"]] == [
        0,
        5,
        10,
        19,
    ]  # window (8) every 5, every 10, last


@pytest.mark.slow
def test_stacked_passes_equal_each_cell_alone(tmp_path: Path) -> None:
    params, source, data = setup(tmp_path)
    alone = trained(params, source, data, LORA_CELLS, together=False)
    stacked = trained(params, source, data, LORA_CELLS, together=True, per_pass=len(LORA_CELLS))
    assert_same(alone, stacked)


@pytest.mark.slow
def test_a_saved_adapter_reproduces_its_cells_predictions(tmp_path: Path) -> None:
    params, source, data = setup(tmp_path)
    out = trained(params, source, data, ["lora_selective", "ia3_selective", "lora_all"], together=True)
    for strategy, res in out.items():
        folder = tmp_path / strategy
        folder.mkdir()
        save_model_state(folder, res["run"])
        model = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(source), folder / "adapter")
        probs = predict(model, data.eval_ids, 8, data.pad, DEVICE, FP32)["probs"]
        np.testing.assert_allclose(probs, res["probs"], atol=1e-6, err_msg=strategy)


@pytest.mark.slow
def test_with_dropout_a_lockstep_group_is_deterministic(tmp_path: Path) -> None:
    params, source, data = setup(tmp_path, dropout=0.1)
    first = trained(params, source, data, LORA_CELLS[:4], together=True, per_pass=2)
    second = trained(params, source, data, LORA_CELLS[:4], together=True, per_pass=2)
    for s in first:
        assert np.array_equal(first[s]["probs"], second[s]["probs"]), s


def test_cells_per_pass_set_by_the_params_is_capped_by_the_stackable_cells(tmp_path: Path) -> None:
    params, source, data = setup(tmp_path)
    runs = [build_run(params, GROUP, s, source, SELECTION, DEVICE) for s in ["lora_selective", "lora_all", "ia3_all"]]
    batch = collate(data.train_ids, data.stream[0], data.pad, data.train_labels)
    assert resolve_per_pass(8, runs, None, batch, FP32, "tiny")[0] == 2  # IA3 never shares a pass
    assert resolve_per_pass(1, runs, None, batch, FP32, "tiny") == (1, "set by finetune.cells_per_pass")
    assert resolve_per_pass("auto", runs[:1], None, batch, FP32, "tiny")[0] == 1
