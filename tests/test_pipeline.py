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
from inflection_layers import cka, diagnose, finetune, prepare, probes, select, source, validate
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


@pytest.mark.slow
def test_every_stage_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(3)
    cfg.vocab_size = 30_522  # the packaged tokenizer's vocabulary
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "tiny")
    load_tokenizer(PACKAGED).save_pretrained(tmp_path / "tiny")
    params = smoke(
        study={
            "targets": ["rt"],
            "regimes": ["under"],
            "seeds": [7],
            "strategies": ["none", "shallow"],
            "lora_strategies": ["lora_selective"],
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
        analysis={"strategies": ["none", "shallow", "lora_selective"], "pca_dim": 16},
        probe={"epochs": 2, "hidden": 16},
    )
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(validate, monkeypatch, "--out", "data/validated.json")
    assert json.loads(Path("data/validated.json").read_text()) == {"params": "valid"}

    run(prepare, monkeypatch, "--out", "data/prepared", "--metrics", "metrics/data.json")
    data = json.loads(Path("metrics/data.json").read_text())
    assert data["source"] == "local" and data["sizes"]["sst2_source"] == 64
    assert data["sizes"]["rt_train"] == 8_530 and data["sizes"]["rt_validation"] == data["sizes"]["rt_test"] == 120
    assert not any(f["matches"] for f in data["files"].values())  # fake files: recorded as not the pinned copies

    run(
        source,
        monkeypatch,
        "--regime",
        "under",
        "--seed",
        "7",
        "--data",
        "data/prepared",
        "--out",
        "models/source/under-7",
        "--metrics",
        "metrics/source/under-7.json",
    )
    assert (tmp_path / "models/source/under-7/model.safetensors").is_file()
    assert json.loads(Path("models/source/under-7/params.json").read_text())["source"]["lr"] == 1e-3
    assert json.loads(Path("metrics/source/under-7.json").read_text())["steps"] == 4  # 64 examples / batch 16

    layers, heads = f"metrics/diagnose/{GROUP}.csv", f"metrics/diagnose/{GROUP}-heads.csv"
    run(
        diagnose,
        monkeypatch,
        "--group",
        GROUP,
        "--model",
        "models/source/under-7",
        "--data",
        "data/prepared",
        "--layers",
        layers,
        "--heads",
        heads,
        "--metrics",
        f"metrics/diagnose/{GROUP}.json",
    )
    table = pd.read_csv(layers)
    assert {"entropy", "act_grad", "param_grad", "rgn", "io_change"} <= set(table["metric"])
    assert sorted(table.loc[table["metric"] == "act_grad", "layer"]) == [-1, 0, 1, 2]
    assert len(pd.read_csv(heads)) == 3 * 4  # layers x heads

    selection = f"metrics/selection/{GROUP}.json"
    run(
        select,
        monkeypatch,
        "--group",
        GROUP,
        "--layers",
        layers,
        "--out",
        selection,
        "--table",
        f"plots/selection/{GROUP}.csv",
    )
    sel = json.loads(Path(selection).read_text())
    assert 1 <= len(sel["band"]) <= 2 and all(len(r["layers"]) == len(sel["band"]) for r in sel["random"])

    run(
        finetune,
        monkeypatch,
        "--group",
        GROUP,
        "--source",
        "models/source/under-7",
        "--data",
        "data/prepared",
        "--out",
        f"models/finetune/{GROUP}",
        "--metrics",
        f"metrics/finetune/{GROUP}",
        "--plots",
        f"plots/finetune/{GROUP}",
    )
    run(
        finetune,
        monkeypatch,
        "--lora",
        "--group",
        GROUP,
        "--source",
        "models/source/under-7",
        "--data",
        "data/prepared",
        "--selection",
        selection,
        "--out",
        f"models/finetune_lora/{GROUP}",
        "--metrics",
        f"metrics/finetune_lora/{GROUP}",
        "--plots",
        f"plots/finetune_lora/{GROUP}",
    )
    for strategy, kind in (("none", "finetune"), ("shallow", "finetune"), ("lora_selective", "finetune_lora")):
        m = json.loads(Path(f"metrics/{kind}/{GROUP}/{strategy}.json").read_text())
        assert m["validation_n"] == 120 and 0 <= m["validation_accuracy"] <= 1
        preds = pd.read_parquet(f"models/{kind}/{GROUP}/{strategy}/predictions.parquet")
        assert len(preds) == 120 and {"id", "split", "label", "prob_pos", "pred"} <= set(preds.columns)
        for pooling in ("cls", "mean"):
            assert np.load(f"models/{kind}/{GROUP}/{strategy}/{pooling}.npy").shape == (
                4,
                120,
                32,
            )  # embeddings + 3 layers
    assert sorted(p.name for p in Path(f"metrics/finetune/{GROUP}").iterdir()) == [
        "none.json",
        "shallow.json",
        "stage.json",
    ]
    lora = json.loads(Path(f"metrics/finetune_lora/{GROUP}/lora_selective.json").read_text())
    assert lora["lora_layers"] == sel["band"]
    assert (tmp_path / f"models/finetune_lora/{GROUP}/lora_selective/adapter/adapter_model.safetensors").is_file()
    assert len(pd.read_csv(f"plots/finetune/{GROUP}/shallow-curve.csv")) == 3  # steps 0, 2 and the last (3)

    run(
        cka,
        monkeypatch,
        "--cells",
        "models/finetune",
        "models/finetune_lora",
        "--table",
        "metrics/cka.csv",
        "--metrics",
        "metrics/cka.json",
    )
    table = pd.read_csv("metrics/cka.csv")
    assert set(table["strategy"]) == {"shallow", "lora_selective"}  # the none cell is the 'before'
    assert set(json.loads(Path("metrics/cka.json").read_text())["cells"]) == {
        f"{GROUP}/shallow",
        f"{GROUP}/lora_selective",
    }

    run(
        probes,
        monkeypatch,
        "--cells",
        "models/finetune",
        "models/finetune_lora",
        "--table",
        "metrics/probes.csv",
        "--metrics",
        "metrics/probes.json",
    )
    table = pd.read_csv("metrics/probes.csv")
    assert set(table["strategy"]) == {"none", "shallow", "lora_selective"}
    assert table["value"].dropna().between(0, 1).all()


def test_lora_group_without_selection_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(smoke(), sort_keys=False))
    with pytest.raises(InputError, match=r"the LoRA strategies need the selection JSON of `select` \(--selection\)"):
        run(
            finetune,
            monkeypatch,
            "--lora",
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
