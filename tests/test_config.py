"""params.yaml validation: one typed schema without defaults; every bad value is refused with the key,
the value and what is allowed; the schema and every profile agree both ways."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from inflection_layers.config import Params, load_params, parse_params
from inflection_layers.errors import ParamError

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (ROOT / "src/inflection_layers/conf/profile").glob("*.yaml"))


def composed(profile: str) -> dict:
    with initialize_config_module("inflection_layers.conf", version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=[f"profile={profile}"]))


def schema_keys(cls: type, prefix: str = "") -> set[str]:
    """Every leaf key the typed schema declares (a mapping of dataclasses counts as a leaf)."""
    keys = set()
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        keys |= schema_keys(tp, key + ".") if dataclasses.is_dataclass(tp) else {key}
    return keys


def yaml_keys(raw: dict, prefix: str = "", stop: frozenset = frozenset({"cluster.resources"})) -> set[str]:
    keys = set()
    for k, v in raw.items():
        key = f"{prefix}{k}"
        keys |= yaml_keys(v, key + ".") if isinstance(v, dict) and key not in stop else {key}
    return keys


def test_the_schema_has_no_default_values() -> None:
    """A default in code would be a hidden profile nobody reads."""

    def walk(cls: type) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                out.append(f"{cls.__name__}.{f.name}")
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                out += walk(tp)
        return out

    assert walk(Params) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_matches_the_schema_both_ways(profile: str) -> None:
    raw = composed(profile)
    assert yaml_keys(raw) == schema_keys(Params), "a key without a field or a field without a key"
    assert parse_params(raw).study.profile == profile


def test_repository_params_are_the_default_profile_parsed() -> None:
    committed = load_params(ROOT / "params.yaml")
    assert committed == parse_params(composed("default"))
    assert committed.study.profile == "default"


def _with(key: str, value: object) -> dict:
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    node = raw
    *parents, last = key.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = value
    return raw


def _without(key: str) -> dict:
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    node = raw
    *parents, last = key.split(".")
    for k in parents:
        node = node[k]
    del node[last]
    return raw


BAD = [
    ("study.regimes", ["under", "overtrained"], "values among"),
    ("study.regimes", [], "non-empty"),
    ("study.targets", ["rt", "imdb"], "values among"),
    ("study.seeds", [42, 42], "without repeats"),
    ("study.seeds", [-1], ">= 0"),
    ("study.seeds", "42", "a value of type list"),
    ("study.strategies", ["head", "full"], "includes 'none'"),
    ("study.strategies", ["none", "lora_all"], "values among"),
    ("study.peft_strategies", ["lora_everywhere"], "values among"),
    ("data.source", "s3", "auto"),
    ("data.dir", 3, "a string"),
    ("data.sst2_subsample", -5, ">= 0"),
    ("data.sst2_subsample", 1.5, "an integer"),
    ("data.subsample_seed", True, "an integer"),
    ("data.verify_checksums", "yes", "true or false"),
    ("data.colour", "red", "no such key"),
    ("model.name", "  ", "packaged"),
    ("model.max_length", 4, "[8, 512]"),
    ("model.precision", "fp16", "one of"),
    ("model", "bert", "mapping"),
    ("sourse", {}, "no such key"),
    ("source.batch_size", 0, ">= 1"),
    ("source.lr", 0.0, "(0, 1)"),
    ("source.schedule", "cosine", "linear"),
    ("source.warmup_ratio", 1.0, "[0, 1)"),
    ("source.max_grad_norm", 0.0, "(0, inf), or null"),
    ("ski.alpha", 1.5, "[0, 1]"),
    ("ski.s", -1, ">= 0"),
    ("ski.method", "argmax", "local_max"),
    ("ski.max_band", 0, ">= 1, or null"),
    ("ski.threshold", 0.0, "(0, 1]"),
    ("ski.random_draws", 0, ">= 1"),
    ("finetune.steps", 0, ">= 1"),
    ("finetune.stepz", 100, "no such key"),
    ("finetune.batch_size", 0, ">= 1"),
    ("finetune.diag_every", 0, ">= 1"),
    ("finetune.lr.full", 2.0, "(0, 1)"),
    ("finetune.lr.lora", 1e-3, "no such key"),
    ("finetune.eval_splits", ["test"], "validation first"),
    ("lora.rank", 0, ">= 1"),
    ("lora.rank", 4.0, "an integer"),
    ("lora.rank", "eight", "an integer"),
    ("lora.dropout", 1.0, "[0, 1)"),
    ("lora.targets", ["query", "output"], "values among"),
    ("analysis.pooling", "max", "cls"),
    ("analysis.strategies", ["full"], "includes 'none'"),
    ("probe.epochs", 0, ">= 1"),
    ("probe.dropout", -0.1, "[0, 1)"),
    ("probe.train_fraction", 1.0, "(0, 1)"),
    ("diagnose.batches", 0, ">= 1"),
    ("report.power", 1.5, "(0, 1)"),
    ("cluster.resources", {"source": {"cpus": 8, "gpus": 1, "minutes": 60, "mem_gb": 8}}, "'default' entry"),
    ("cluster.resources", {"default": {"cpus": 0, "gpus": 0, "minutes": 60, "mem_gb": 8}}, ">= 1"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_parameters_name_key_value_and_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params(_with(key, value))
    message = str(err.value)
    assert message.startswith("params.yaml: ") and allowed in message
    assert key.split(".")[0] in message


@pytest.mark.parametrize("key", ["finetune.steps", "lora.lr", "study", "ski.random_draws", "finetune.lr.head"])
def test_a_missing_key_is_an_error_naming_it(key: str) -> None:
    with pytest.raises(ParamError, match=rf"{key.replace('.', '[.]')} = '\(missing\)'"):
        parse_params(_without(key))


def test_int_is_accepted_where_a_float_is_expected() -> None:
    assert parse_params(_with("source.weight_decay", 0)).source.weight_decay == 0.0


def test_learning_rate_per_strategy() -> None:
    p = parse_params(_with("lora.lr", 0.002))
    assert p.lr("lora_random_3") == p.lr("lora_selective") == 0.002
    assert p.lr("full") == p.finetune.lr.full and p.lr("head") == p.finetune.lr.head


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ParamError, match=r"params.yaml"):
        load_params(tmp_path / "params.yaml")
