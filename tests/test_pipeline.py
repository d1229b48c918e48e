"""Smoke test: every stage's main() end to end, in order, on a tiny random BERT and tiny data in a temporary directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import BertForSequenceClassification

from conftest import tiny_config
from inflection_layers import cka, diagnose, finetune, prepare, probes, select, source
from inflection_layers.modeling import PACKAGED, load_tokenizer


def fake_data(root: Path) -> Path:
    """Files in the original formats with the real row counts (the loader checks them), tiny vocabulary."""
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


def test_every_stage_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(3)
    cfg.vocab_size = 30_522  # the packaged tokenizer's vocabulary
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "tiny")
    load_tokenizer(PACKAGED).save_pretrained(tmp_path / "tiny")
    params = {
        "study": {"regimes": ["under"], "seeds": [7], "strategies": ["none", "shallow"], "lora_strategies": ["lora_selective"]},
        "data": {"source": "local", "dir": str(fake_data(tmp_path / "raw")), "sst2_subsample": 64},
        "model": {"name": str(tmp_path / "tiny"), "max_length": 32},
        "source": {"epochs_under": 1, "epochs_over": 2, "batch_size": 16, "lr": 1e-3, "eval_batch_size": 256},
        "diagnose": {"batches": 2, "batch_size": 8},
        "ski": {"max_band": 2, "s": 0},
        "finetune": {"steps": 4, "diag_every": 2, "batch_size": 8, "eval_batch_size": 512},
        "lora": {"rank": 2, "alpha": 4},
        "analysis": {"pca_dim": 16},
        "probe": {"train_size": 200, "eval_size": 100, "epochs": 2, "hidden": 16},
    }
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params))

    run(prepare, monkeypatch, "--out", "data/prepared", "--metrics", "metrics/data.json")
    data = json.loads(Path("metrics/data.json").read_text())
    assert data["sizes"]["sst2_source"] == 64 and data["sizes"]["rt_validation"] == 1_066

    run(source, monkeypatch, "--regime", "under", "--seed", "7", "--data", "data/prepared", "--out", "models/source/under-7", "--metrics", "m/source.json")
    assert (tmp_path / "models/source/under-7/model.safetensors").is_file()
    assert json.loads(Path("models/source/under-7/params.json").read_text())["source"]["lr"] == 1e-3
    assert json.loads(Path("m/source.json").read_text())["steps"] == 4  # 64 examples / batch 16

    run(diagnose, monkeypatch, "--regime", "under", "--seed", "7", "--model", "models/source/under-7", "--data", "data/prepared",
        "--layers", "m/diag.csv", "--heads", "m/heads.csv", "--metrics", "m/diag.json")
    layers = pd.read_csv("m/diag.csv")
    assert set(layers["metric"]) == {"entropy", "entropy_norm", "act_grad", "param_grad"}
    assert sorted(layers.loc[layers["metric"] == "act_grad", "layer"]) == [-1, 0, 1, 2]
    assert len(pd.read_csv("m/heads.csv")) == 3 * 4

    run(select, monkeypatch, "--regime", "under", "--seed", "7", "--layers", "m/diag.csv", "--out", "m/sel.json", "--table", "m/sel.csv")
    sel = json.loads(Path("m/sel.json").read_text())
    assert 1 <= len(sel["band"]) <= 2 and len(sel["random_band"]) == len(sel["band"])

    run(finetune, monkeypatch, "--regime", "under", "--seed", "7", "--source", "models/source/under-7", "--data", "data/prepared",
        "--out", "models/ft/under-7", "--metrics", "m/ft/under-7", "--plots", "p/ft/under-7")
    run(finetune, monkeypatch, "--lora", "--regime", "under", "--seed", "7", "--source", "models/source/under-7", "--selection", "m/sel.json",
        "--data", "data/prepared", "--out", "models/ft_lora/under-7", "--metrics", "m/ft_lora/under-7", "--plots", "p/ft_lora/under-7")
    for strategy, kind in (("none", "ft"), ("shallow", "ft"), ("lora_selective", "ft_lora")):
        m = json.loads(Path(f"m/{kind}/under-7/{strategy}.json").read_text())
        assert m["validation_free_n"] == 1_066 and 0 <= m["test_free_accuracy"] <= 1
        preds = pd.read_parquet(f"models/{kind}/under-7/{strategy}/predictions.parquet")
        assert len(preds) == 2 * 1_066
        for pooling in ("cls", "mean"):
            assert np.load(f"models/{kind}/under-7/{strategy}/{pooling}.npy").shape == (4, 2 * 1_066, 32)
    assert sorted(p.name for p in Path("m/ft/under-7").iterdir()) == ["none.json", "shallow.json"]
    lora = json.loads(Path("m/ft_lora/under-7/lora_selective.json").read_text())
    assert lora["lora_layers"] == sel["band"]
    assert lora["trainable_parameters"] == len(sel["band"]) * 3 * 2 * 2 * 32 + 66
    assert (tmp_path / "models/ft_lora/under-7/lora_selective/adapter/adapter_model.safetensors").is_file()
    assert len(pd.read_csv("p/ft/under-7/shallow-curve.csv")) == 3  # steps 0, 2 and the last (3)

    run(cka, monkeypatch, "--cells", "models/ft", "models/ft_lora", "--table", "m/cka.csv", "--metrics", "m/cka.json")
    table = pd.read_csv("m/cka.csv")
    assert set(table["strategy"]) == {"shallow", "lora_selective"}  # the none cell is the 'before'
    assert sorted(set(table["layer"])) == [0, 1, 2]  # the embeddings' [CLS] is constant: no CKA
    assert table["value"].between(-0.5, 1.0 + 1e-9).all()
    assert set(json.loads(Path("m/cka.json").read_text())) == {"under-shallow-7", "under-lora_selective-7"}

    run(probes, monkeypatch, "--cells", "models/ft", "models/ft_lora", "--table", "m/probes.csv", "--metrics", "m/probes.json")
    table = pd.read_csv("m/probes.csv")
    assert set(table["metric"]) == {"linear", "mlp", "linear_shuffled", "mlp_shuffled", "majority"}
    assert len(table) == 3 * 3 * 5 and table["value"].between(0, 1).all()  # 3 cells, layers 0-2 (the embeddings' [CLS] is constant)


def test_lora_group_without_selection_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"study": {"seeds": [1]}}))
    with pytest.raises(FileNotFoundError, match="selection"):
        run(finetune, monkeypatch, "--lora", "--regime", "under", "--seed", "1", "--source", "x", "--data", "x",
            "--out", "o", "--metrics", "m", "--plots", "p")
    assert not any(Path(p).exists() for p in ("o", "m", "p"))
