"""params.yaml validation: every bad value is refused with the key, the value and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from inflection_layers.config import ParamError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)


def test_defaults_match_the_paper_where_the_paper_is_explicit() -> None:
    p = Params()
    assert (p.source.epochs_under, p.source.epochs_over, p.source.lr, p.source.batch_size) == (1, 8, 2e-5, 32)
    assert p.study.seeds == [42, 43, 44]


def _with(key: str, value: object) -> dict:
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    node = raw
    *parents, last = key.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = value
    return raw


BAD = [
    ("study.regimes", ["under", "overtrained"], "one of"),
    ("study.regimes", [], "non-empty"),
    ("study.seeds", [42, 42], "without repeats"),
    ("study.seeds", [-1], ">= 0"),
    ("study.seeds", "42", "type list"),
    ("data.source", "s3", "auto"),
    ("data.dir", 3, "type str"),
    ("data.sst2_subsample", -5, ">= 0"),
    ("data.sst2_subsample", 1.5, "type int"),
    ("data.subsample_seed", True, "type int"),
    ("data.colour", "red", "no such key"),
    ("model.name", "  ", "packaged"),
    ("model.max_length", 4, "[8, 512]"),
    ("model", "bert", "mapping"),
    ("sourse", {}, "no such key"),
    ("study.strategies", ["none", "lora_all"], "study.lora_strategies"),
    ("study.lora_strategies", ["lora_everywhere"], "one of"),
    ("source.batch_size", 0, ">= 1"),
    ("source.lr", 0.0, "(0, 1)"),
    ("source.schedule", "cosine", "linear"),
    ("source.warmup_ratio", 1.0, "[0, 1)"),
    ("ski.alpha", 1.5, "[0, 1]"),
    ("ski.s", -1, ">= 0"),
    ("ski.method", "argmax", "local_max"),
    ("ski.max_band", 0, ">= 1"),
    ("ski.threshold", 0.0, "(0, 1]"),
    ("finetune.steps", 0, ">= 1"),
    ("finetune.batch_size", 0, ">= 1"),
    ("finetune.diag_every", 0, ">= 1"),
    ("lora.rank", 0, ">= 1"),
    ("lora.rank", 4.0, "type int"),
    ("lora.dropout", 1.0, "[0, 1)"),
    ("lora.targets", ["query", "output"], "module names"),
    ("analysis.pooling", "max", "cls"),
    ("probe.epochs", 0, ">= 1"),
    ("probe.dropout", -0.1, "[0, 1)"),
    ("diagnose.batches", 0, ">= 1"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_parameters_name_key_value_and_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params(_with(key, value))
    message = str(err.value)
    assert key.split(".")[0] in message and allowed in message
    shown = value if not isinstance(value, list) else [v for v in value if repr(v) in message][:1] or value
    assert isinstance(value, dict) or repr(shown[0] if isinstance(shown, list) and shown else shown) in message


def test_int_is_accepted_where_a_float_is_expected() -> None:
    assert parse_params({"source": {"weight_decay": 0}}).source.weight_decay == 0.0


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="params.yaml not found"):
        load_params(tmp_path / "params.yaml")
