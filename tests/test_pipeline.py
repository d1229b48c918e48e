"""Every stage's main() end to end, in dvc.yaml's order, on a tiny random BERT and tiny data in a temporary directory.

The real pipeline (DVC, the packaged model, the smoke profile) is checked by `.ci/run` and, for its first
stages, by tests/test_reliability.py; this test checks that the stages fit together: each reads what the
one before wrote, under the arguments dvc.yaml gives.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from transformers import BertForSequenceClassification

from conftest import tiny_config
from inflection_layers import cka, diagnose, features, finetune, intervene, prepare, probes, select, source, validate
from inflection_layers.archs import PACKAGED
from inflection_layers.errors import InputError
from inflection_layers.modeling import load_tokenizer

GROUP = "rt-under-7"


def smoke(**sections: dict) -> dict:
    """The smoke profile as `dvc exp run -S profile=smoke` composes it, with some keys replaced."""
    with initialize_config_module("inflection_layers.conf", version_base=None):
        raw = OmegaConf.to_container(compose(config_name="config", overrides=["profile=smoke"]), resolve=True)
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def fake_data(root: Path) -> Path:
    """SST-2 and RT files in the original formats with the real row counts (the loader checks them), tiny vocabulary."""
    words = ["good", "bad", "fine", "awful", "film", "plot", "great", "dull"]
    (root / "SST-2").mkdir(parents=True)
    (root / "rt-polaritydata").mkdir()
    for name, n in (("train", 67_349), ("dev", 872)):
        rows = [f"{words[i % 8]} {words[(i * 7) % 8]} {name} {i} \t{i % 2}\n" for i in range(n)]
        (root / f"SST-2/{name}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    for ext, label in (("pos", 1), ("neg", 0)):
        lines = [f"{words[(i + label) % 8]} movie {ext} {i} .\n" for i in range(5_331)]
        (root / f"rt-polaritydata/rt-polarity.{ext}").write_bytes("".join(lines).encode("latin-1"))
    return root


def run(module: object, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    module.main()


def flags(**kw: str | list[str]) -> list[str]:
    """--key value pairs as dvc.yaml writes them (underscores become hyphens; a list is several values)."""
    out: list[str] = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", *(v if isinstance(v, list) else [v])]
    return out


def tiny_params(tmp_path: Path) -> dict:
    """The smoke profile on a tiny random BERT, one group, every kind of stage and cell."""
    return smoke(
        study={
            "targets": ["rt"],
            "regimes": ["under"],
            "seeds": [7],
            "strategies": ["none", "shallow", "full"],
            "peft_strategies": ["lora_selective", "lora_all", "lora_random", "ia3_selective", "prefix"],
        },
        data={
            "source": "local",
            "dir": str(fake_data(tmp_path / "raw")),
            "sst2_subsample": 64,
            "eval_subsample": 120,
            "verify_checksums": False,
        },
        model={"name": str(tmp_path / "tiny"), "max_length": 32, "precision": "fp32"},
        source={"epochs_under": 1, "batch_size": 16, "lr": 1e-3, "eval_batch_size": 256},
        diagnose={"batches": 2, "batch_size": 8},
        ski={"max_band": 2, "s": 0, "random_draws": 2},
        finetune={"steps": 4, "diag_every": 2, "batch_size": 8, "eval_batch_size": 512},
        lora={"rank": 2, "alpha": 4},
        intervene={"temperatures": [1.0, 2.0], "diag_every": 1},
        features={"train_tokens": 300, "expansion": 2, "k": 4, "epochs": 1, "batch_size": 64},
        analysis={
            "strategies": [
                "none",
                "shallow",
                "full",
                "lora_selective",
                "lora_all",
                "lora_selective_tau",
                "lora_selective_tau_ctrl",
                "lora_selective_anneal",
            ],
            "pca_dim": 16,
        },
        probe={"epochs": 2, "hidden": 16},
    )


CELLS = {
    "finetune": ["none", "shallow", "full"],
    "finetune_peft": ["lora_selective", "lora_all", "lora_random_0", "lora_random_1", "ia3_selective", "prefix"],
    "finetune_tau": ["lora_selective_tau", "lora_selective_tau_ctrl", "lora_selective_anneal"],
}


def run_finetune_stages(monkeypatch: pytest.MonkeyPatch, selection: str) -> None:
    for stage, kind in (("finetune", "plain"), ("finetune_peft", "peft"), ("finetune_tau", "tau")):
        extra = {"selection": selection} if kind != "plain" else {}
        run(
            finetune,
            monkeypatch,
            *flags(
                kind=kind,
                group=GROUP,
                source="models/source/under-7",
                data="data/prepared",
                **extra,
                out=f"models/{stage}/{GROUP}",
                metrics=f"metrics/{stage}/{GROUP}",
                plots=f"plots/{stage}/{GROUP}",
            ),
        )
        assert sorted(p.name for p in Path(f"metrics/{stage}/{GROUP}").iterdir()) == sorted(
            [f"{s}.json" for s in CELLS[stage]] + ["stage.json"]
        )


def check_cells(sel: dict) -> None:
    for stage, names in CELLS.items():
        for strategy in names:
            m = json.loads(Path(f"metrics/{stage}/{GROUP}/{strategy}.json").read_text())
            assert m["validation_n"] == 120 and 0 <= m["validation_accuracy"] <= 1, strategy
            preds = pd.read_parquet(f"models/{stage}/{GROUP}/{strategy}/predictions.parquet")
            assert len(preds) == 120 and {"id", "split", "label", "prob_pos", "pred"} <= set(preds.columns)
    for stage, strategy in (
        ("finetune", "shallow"),
        ("finetune_peft", "lora_all"),
        ("finetune_tau", "lora_selective_anneal"),
    ):
        for pooling in ("cls", "mean"):  # analysed cells: embeddings + 3 layers, 120 sentences, width 32
            assert np.load(f"models/{stage}/{GROUP}/{strategy}/{pooling}.npy").shape == (4, 120, 32)
    assert Path(f"models/finetune/{GROUP}/full/trainable.safetensors").is_file()
    lora = json.loads(Path(f"metrics/finetune_peft/{GROUP}/lora_selective.json").read_text())
    assert (
        lora["adapted_layers"] == sel["band"] and Path(f"models/finetune_peft/{GROUP}/lora_selective/adapter").is_dir()
    )
    anneal = json.loads(Path(f"metrics/finetune_tau/{GROUP}/lora_selective_anneal.json").read_text())
    assert anneal["temperature"]["tau_first_step"] == 1.5 and anneal["temperature"]["tau_evaluation"] == 1.0
    stage = json.loads(Path(f"metrics/finetune_peft/{GROUP}/stage.json").read_text())
    assert stage["lockstep_cells"] == 6 and stage["cells_per_pass"] >= 1


@pytest.mark.slow
def test_every_stage_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(3)
    cfg.vocab_size = 30_522  # the packaged tokenizer's vocabulary
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "tiny")
    load_tokenizer(PACKAGED).save_pretrained(tmp_path / "tiny")
    params = tiny_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFLECTION_LAYERS_CACHE", str(tmp_path / "cache"))
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(validate, monkeypatch, *flags(out="data/validated.json"))
    assert json.loads(Path("data/validated.json").read_text()) == {"params": "valid"}
    run(prepare, monkeypatch, *flags(out="data/prepared", metrics="metrics/data.json"))
    data = json.loads(Path("metrics/data.json").read_text())
    assert data["source"] == "local" and data["sizes"]["sst2_source"] == 64
    assert data["sizes"]["rt_train"] == 8_530 and data["sizes"]["rt_validation"] == data["sizes"]["rt_test"] == 120
    assert not any(f["matches"] for f in data["files"].values())  # fake files: recorded as not the pinned copies

    run(
        source,
        monkeypatch,
        *flags(
            regime="under",
            seed="7",
            data="data/prepared",
            out="models/source/under-7",
            metrics="metrics/source/under-7.json",
        ),
    )
    assert (tmp_path / "models/source/under-7/model.safetensors").is_file()
    assert json.loads(Path("models/source/under-7/params.json").read_text())["source"]["lr"] == 1e-3
    assert json.loads(Path("metrics/source/under-7.json").read_text())["steps"] == 4  # 64 examples / batch 16

    layers, heads = f"metrics/diagnose/{GROUP}.csv", f"metrics/diagnose/{GROUP}-heads.csv"
    run(
        diagnose,
        monkeypatch,
        *flags(
            group=GROUP,
            model="models/source/under-7",
            data="data/prepared",
            layers=layers,
            heads=heads,
            metrics=f"metrics/diagnose/{GROUP}.json",
        ),
    )
    table = pd.read_csv(layers)
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
    assert len(pd.read_csv(heads)) == 3 * 4 and {"entropy", "attn_rank", "column_mass", "first_column"} <= set(
        pd.read_csv(heads)
    )

    selection = f"metrics/selection/{GROUP}.json"
    run(select, monkeypatch, *flags(group=GROUP, layers=layers, out=selection, table=f"plots/selection/{GROUP}.csv"))
    sel = json.loads(Path(selection).read_text())
    assert 1 <= len(sel["band"]) <= 2 and all(len(r["layers"]) == len(sel["band"]) for r in sel["random"])

    run(
        intervene,
        monkeypatch,
        *flags(
            group=GROUP,
            model="models/source/under-7",
            data="data/prepared",
            selection=selection,
            table=f"metrics/intervene/{GROUP}.csv",
            metrics=f"metrics/intervene/{GROUP}.json",
        ),
    )
    placed = pd.read_csv(f"metrics/intervene/{GROUP}.csv")
    assert set(placed["placement"]) == {"none", "band", "control_0", "control_1", "all"} and set(placed["tau"]) == {
        1.0,
        2.0,
    }

    run_finetune_stages(monkeypatch, selection)
    check_cells(sel)
    roots = ["models/finetune", "models/finetune_peft", "models/finetune_tau"]
    run(cka, monkeypatch, *flags(cells=roots, table="metrics/cka.csv", metrics="metrics/cka.json"))
    analysed = set(params["analysis"]["strategies"])
    assert set(pd.read_csv("metrics/cka.csv")["strategy"]) == analysed - {"none"}  # the none cell is the 'before'
    run(probes, monkeypatch, *flags(cells=roots, table="metrics/probes.csv", metrics="metrics/probes.json"))
    table = pd.read_csv("metrics/probes.csv")
    assert set(table["strategy"]) == analysed and table["value"].dropna().between(0, 1).all()
    run(
        features,
        monkeypatch,
        *flags(
            sources="models/source",
            data="data/prepared",
            cells=roots,
            cell_metrics=[r.replace("models", "metrics") for r in roots],
            table="metrics/features.csv",
            metrics="metrics/features.json",
        ),
    )
    table = pd.read_csv("metrics/features.csv")
    assert set(table["strategy"]) == analysed and {"fvu", "l0", "dead", "cosine", "excess_fvu_per_shift"} <= set(
        table["metric"]
    )


def test_lora_group_without_selection_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(smoke(), sort_keys=False))
    with pytest.raises(InputError, match=r"the peft strategies need the selection JSON of `select` \(--selection\)"):
        run(
            finetune,
            monkeypatch,
            "--kind",
            "peft",
            "--group",
            "rt-under-42",
            "--source",
            "x",
            "--data",
            "x",
            "--out",
            "o",
            "--metrics",
            "m",
            "--plots",
            "p",
        )
    assert not any(Path(p).exists() for p in ("o", "m", "p"))
