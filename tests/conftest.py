"""Shared fixtures: a tiny random-weight BERT, as in transformers' own tests (no download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

if TYPE_CHECKING:
    from stage_cases import Run


def tiny_config(num_layers: int = 3) -> BertConfig:
    """Hidden 32, 4 heads, vocab 99: seconds to build, nothing to download."""
    return BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    """A 3-layer random BertForSequenceClassification in eval mode, seeded."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    model.eval()
    return model


@pytest.fixture
def tiny_batch() -> dict[str, torch.Tensor]:
    """Two sequences of length 7, the second padded after 4 tokens; labels (2,)."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 99, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 4:] = 0
    input_ids[1, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([0, 1])}


def params_with(**sections: dict) -> Params:  # noqa: F821
    """The committed params.yaml with some keys replaced, e.g. params_with(finetune={"steps": 7})."""
    import copy
    from pathlib import Path

    import yaml

    from inflection_layers.config import parse_params

    raw = copy.deepcopy(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text()))
    for section, values in sections.items():
        raw[section].update(values)
    return parse_params(raw)


def tiny_mpnet(num_layers: int = 3):
    """A tiny random MPNetForSequenceClassification (hidden 32, 4 heads, vocab 99), eager attention."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    config = MPNetConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return MPNetForSequenceClassification(config)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory):
    """A whole study (every stage and the report) on a tiny random BERT: 2 targets x 2 regimes x 2 seeds."""
    from study import build

    return build(tmp_path_factory.mktemp("tiny-study"), ["rt", "cr"], ["under", "over"], [7, 8])


# ------------------------------------- bad parameters and damaged inputs, every stage case run once (stage_cases.py)


@pytest.fixture(scope="session")
def stage_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, Path, list[dict]]]:
    """Start every case of CASES in one interpreter, sockets refused, in the background: (process, folder, cases).

    The DVC workspace (tests/test_bad_params.py) asks for it first, so the runner works while DVC runs (they share
    nothing). Session-scoped: test_bad_params.py, test_damaged_data.py and test_checkpoints.py share one run.
    """
    from stage_cases import (
        CASES,
        NET_GUARD,
        SHARED_DATA,
        STAGE_RUNNER,
        clean_env,
        compose_smoke,
        hydra_conf,
        write_params,
    )

    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline data copies are not at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("stages")
    specs = []
    with hydra_conf():
        params = {name: compose_smoke(*case.overrides) for name, case in CASES.items()}
    for i, (name, case) in enumerate(CASES.items()):
        folder, raw = root / f"case{i:02d}", params[name]
        folder.mkdir()
        if case.setup is not None:
            case.setup(folder, raw)
        write_params(folder, raw)
        specs.append(
            {
                "name": name,
                "module": case.module,
                "argv": list(case.argv),
                "cwd": str(folder),
                "log": str(root / f"case{i:02d}.log"),
            }
        )
    guard = root / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    (root / "cases.json").write_text(json.dumps(specs))
    env = clean_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
        NET_ATTEMPTS=str(root / "net-attempts.jsonl"),
        HF_HOME=str(root / "empty-hf-home"),
    )
    with open(root / "runner.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", STAGE_RUNNER, str(root / "cases.json"), str(root / "results.json")],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc, root, specs
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def stage_runs(stage_runner: tuple[subprocess.Popen, Path, list[dict]]) -> dict[str, Run]:
    """The runner's results: case name -> Run (and "net-attempts": what the socket guard recorded)."""
    from stage_cases import Run

    proc, root, specs = stage_runner
    rc = proc.wait(timeout=600)
    assert rc == 0 and (root / "results.json").is_file(), (root / "runner.log").read_text()[-4000:]
    results = json.loads((root / "results.json").read_text())
    runs = {
        s["name"]: Run(
            results[s["name"]]["rc"],
            Path(s["log"]).read_text(errors="replace"),
            results[s["name"]]["seconds"],
            Path(s["cwd"]),
        )
        for s in specs
    }
    attempts = root / "net-attempts.jsonl"
    runs["net-attempts"] = Run(0, attempts.read_text() if attempts.exists() else "", 0.0, root)
    return runs


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer random encoder (no classifier: load_model draws it from the seed; dropout on) + the packaged
    tokenizer.

    Session-scoped (read-only): shared by test_atomic_outputs.py and test_damaged_data.py.
    """
    from inflection_layers.archs import PACKAGED
    from inflection_layers.modeling import load_tokenizer

    torch.manual_seed(0)
    cfg = tiny_config(2)
    cfg.vocab_size = 30_522  # the packaged tokenizer's vocabulary
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.1  # so the dropout RNG is part of what must repeat
    out = tmp_path_factory.mktemp("tiny")
    BertModel(cfg).save_pretrained(out)
    load_tokenizer(PACKAGED).save_pretrained(out)
    return out
