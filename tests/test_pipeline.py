"""Every stage's main() end to end, in dvc.yaml's order, on a tiny random BERT and tiny data (tests/study.py): the
stages fit together, each reading what the one before wrote under the arguments dvc.yaml gives. The real pipeline
(DVC, the packaged model, the smoke profile) is checked by `.ci/run`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from study import build, flags, smoke

from inflection_layers import finetune
from inflection_layers.errors import InputError

CELLS = {
    "finetune": ["none", "head", "shallow", "full"],
    "finetune_peft": [
        "lora_selective",
        "lora_all",
        "lora_random_0",
        "lora_random_1",
        "lora_top",
        "ia3_all",
        "ia3_selective",
        "prefix",
    ],
    "finetune_tau": ["lora_selective_tau", "lora_selective_tau_ctrl", "lora_selective_anneal"],
}
GROUP = "rt-under-7"


@pytest.fixture(scope="module")
def one_group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("one-group"), ["rt"], ["under"], [7], with_report=False)


@pytest.mark.slow
def test_the_first_stages(one_group: Path) -> None:
    assert json.loads((one_group / "data/validated.json").read_text()) == {"params": "valid"}
    data = json.loads((one_group / "metrics/data.json").read_text())
    assert data["source"] == "local" and data["sizes"]["sst2_source"] == 64
    assert data["sizes"]["rt_train"] == 8_530 and data["sizes"]["rt_validation"] == data["sizes"]["rt_test"] == 120
    assert not any(f["matches"] for f in data["files"].values())  # fake files: recorded as not the pinned copies
    assert (one_group / "models/source/under-7/model.safetensors").is_file()
    assert json.loads((one_group / "models/source/under-7/params.json").read_text())["source"]["lr"] == 1e-3
    assert json.loads((one_group / "metrics/source/under-7.json").read_text())["steps"] == 4  # 64 examples / batch 16


@pytest.mark.slow
def test_diagnose_select_and_intervene(one_group: Path) -> None:
    table = pd.read_csv(one_group / f"metrics/diagnose/{GROUP}.csv")
    assert {
        "entropy",
        "attn_rank",
        "attn_rank_max",
        "column_mass",
        "act_grad",
        "act_grad_token_mean",
        "param_grad",
        "rgn",
        "io_change",
    } <= set(table["metric"])
    assert sorted(table.loc[table["metric"] == "act_grad", "layer"]) == [-1, 0, 1, 2]
    heads = pd.read_csv(one_group / f"metrics/diagnose/{GROUP}-heads.csv")
    assert len(heads) == 3 * 4 and {"entropy", "attn_rank", "column_mass", "first_column"} <= set(heads)
    sel = json.loads((one_group / f"metrics/selection/{GROUP}.json").read_text())
    assert 1 <= len(sel["band"]) <= 2 and all(len(r["layers"]) == len(sel["band"]) for r in sel["random"])
    placed = pd.read_csv(one_group / f"metrics/intervene/{GROUP}.csv")
    assert set(placed["placement"]) == {"none", "band", "control_0", "control_1", "all"} and set(placed["tau"]) == {
        1.0,
        2.0,
    }


@pytest.mark.slow
def test_every_cell_of_the_three_finetune_stages(one_group: Path) -> None:
    sel = json.loads((one_group / f"metrics/selection/{GROUP}.json").read_text())
    for stage, names in CELLS.items():
        assert sorted(p.name for p in (one_group / f"metrics/{stage}/{GROUP}").iterdir()) == sorted(
            [f"{s}.json" for s in names] + ["stage.json"]
        )
        for strategy in names:
            m = json.loads((one_group / f"metrics/{stage}/{GROUP}/{strategy}.json").read_text())
            assert m["validation_n"] == 120 and 0 <= m["validation_accuracy"] <= 1, strategy
            preds = pd.read_parquet(one_group / f"models/{stage}/{GROUP}/{strategy}/predictions.parquet")
            assert len(preds) == 120 and {"id", "split", "label", "prob_pos", "pred"} <= set(preds.columns)
    for stage, strategy in (
        ("finetune", "shallow"),
        ("finetune_peft", "lora_all"),
        ("finetune_tau", "lora_selective_anneal"),
    ):
        for pooling in ("cls", "mean"):  # analysed cells: embeddings + 3 layers, 120 sentences, width 32
            assert np.load(one_group / f"models/{stage}/{GROUP}/{strategy}/{pooling}.npy").shape == (4, 120, 32)
    assert (one_group / f"models/finetune/{GROUP}/full/trainable.safetensors").is_file()
    lora = json.loads((one_group / f"metrics/finetune_peft/{GROUP}/lora_selective.json").read_text())
    assert (
        lora["adapted_layers"] == sel["band"]
        and (one_group / f"models/finetune_peft/{GROUP}/lora_selective/adapter").is_dir()
    )
    anneal = json.loads((one_group / f"metrics/finetune_tau/{GROUP}/lora_selective_anneal.json").read_text())
    assert anneal["temperature"]["tau_first_step"] == 1.5 and anneal["temperature"]["tau_evaluation"] == 1.0
    stage = json.loads((one_group / f"metrics/finetune_peft/{GROUP}/stage.json").read_text())
    assert stage["lockstep_cells"] == 8 and stage["cells_per_pass"] >= 1


@pytest.mark.slow
def test_the_analyses(one_group: Path) -> None:
    analysed = set(yaml.safe_load((one_group / "params.yaml").read_text())["analysis"]["strategies"])
    assert set(pd.read_csv(one_group / "metrics/cka.csv")["strategy"]) == analysed - {
        "none"
    }  # the none cell is the 'before'
    table = pd.read_csv(one_group / "metrics/probes.csv")
    assert set(table["strategy"]) == analysed and table["value"].dropna().between(0, 1).all()
    table = pd.read_csv(one_group / "metrics/features.csv")
    assert set(table["strategy"]) == analysed and {"fvu", "l0", "dead", "cosine", "excess_fvu_per_shift"} <= set(
        table["metric"]
    )


def test_a_peft_group_without_selection_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(smoke(), sort_keys=False))
    monkeypatch.setattr(
        sys,
        "argv",
        ["finetune", *flags(kind="peft", group="rt-under-42", source="x", data="x", out="o", metrics="m", plots="p")],
    )
    with pytest.raises(InputError, match=r"the peft strategies need the selection JSON of `select` \(--selection\)"):
        finetune.main()
    assert not any(Path(p).exists() for p in ("o", "m", "p"))


POWER = {  # the power run's cells (docs/results.md): the paper's strategies, none and lora_top; no intervention cells
    "study": {
        "strategies": ["none", "shallow", "full"],
        "peft_strategies": ["lora_selective", "lora_all", "lora_top"],
        "tau_strategies": [],
    },
    "analysis": {"strategies": ["none", "shallow", "full", "lora_selective", "lora_all"]},
}


@pytest.mark.slow
def test_a_study_without_intervention_cells_runs_every_stage_and_judges_the_paper_claims(tmp_path: Path) -> None:
    root = build(tmp_path, ["rt"], ["under", "over"], [7, 8], overrides=POWER)
    tau = json.loads((root / "metrics/finetune_tau/rt-over-8/stage.json").read_text())
    assert tau["cells"] == 0 and not any((root / "models/finetune_tau/rt-over-8").iterdir())
    claims = pd.read_csv(root / "plots/report/claims.csv")
    primary = claims[claims["role"] == "primary"].set_index("id")
    assert {f"P{i}" for i in range(1, 11)} <= set(primary.index)
    assert (primary.loc[["P2", "P3", "P4"], "n_seeds"] == 2).all()  # decided on the paper's cells, both seeds
    decided = ["Reproduced", "Partially reproduced", "Not reproduced"]
    assert primary.loc[["P2", "P3", "P4"], "verdict"].isin(decided).all()
    not_run = primary.loc[["O5", "O6", "O10", "O11"]]  # the intervention cells and the other PEFT families
    assert (not_run["n_seeds"] == 0).all() and (not_run["verdict"] == "Inconclusive").all()
