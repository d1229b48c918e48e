"""Profiles: params.yaml is the default profile as DVC's Hydra composition writes it; each profile says what it
claims."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from inflection_layers.cells import PEFT_STRATEGIES, TAU_STRATEGIES
from inflection_layers.config import parse_params
from inflection_layers.errors import ParamError
from inflection_layers.reporting.paper import Paper, setup

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (ROOT / "src/inflection_layers/conf/profile").glob("*.yaml"))


def composed(*overrides: str) -> str:
    """params.yaml's text as `dvc exp run -S ...` writes it (dvc.utils.hydra.compose_and_dump)."""
    with initialize_config_module("inflection_layers.conf", version_base=None):
        return OmegaConf.to_yaml(compose(config_name="config", overrides=list(overrides)))


def profile(name: str, *overrides: str):
    return parse_params(yaml.safe_load(composed(f"profile={name}", *overrides)))


def test_committed_params_are_the_default_profile_byte_for_byte() -> None:
    """Otherwise the first `dvc exp run` would silently change the study."""
    assert (ROOT / "params.yaml").read_text() == composed()


def test_the_profiles() -> None:
    assert PROFILES == ["base-check", "default", "paper", "paper-offline", "quick", "smoke"]


STATED = ROOT / "data" / "paper" / "stated.csv"
DEPARTURES = pd.read_csv(ROOT / "data" / "paper" / "departures.csv")


def value_at(raw: dict, key: str) -> object:
    node = raw
    for part in key.split("."):
        node = node[part]
    return node


def test_the_default_departs_from_the_paper_only_where_departures_csv_says_why() -> None:
    """Every setting the paper states (stated.csv) holds in the default profile, unless data/paper/departures.csv lists
    the key with its reason; and every listed key does depart (the list is not stale)."""
    stated, raw = setup(Paper.read(STATED)), yaml.safe_load(composed())
    departing = {key for key, value in stated.items() if value_at(raw, key) != value}
    assert departing == set(DEPARTURES["key"]), "update data/paper/departures.csv"
    assert DEPARTURES["why"].str.len().min() > 20


def test_the_default_runs_the_papers_adaptation_protocol() -> None:
    """Steps, batch sizes, epochs, LoRA's shape and the seeds are the paper's (stated.csv), not departures."""
    stated, raw = setup(Paper.read(STATED)), yaml.safe_load(composed())
    protocol = [
        "finetune.steps",
        "finetune.batch_size",
        "source.batch_size",
        "source.epochs_under",
        "source.epochs_over",
        "lora.rank",
        "lora.alpha",
        "lora.dropout",
        "lora.targets",
        "study.seeds",
    ]
    assert all(value_at(raw, key) == stated[key] for key in protocol)
    p = profile("default")
    assert set(p.study.targets) == {"rt", "cr"} and set(p.study.regimes) == {"under", "over"}
    assert set(p.study.peft_strategies) == set(PEFT_STRATEGIES) and set(p.study.tau_strategies) == set(TAU_STRATEGIES)


def test_the_paper_profile_sets_every_value_the_paper_states() -> None:
    """data/paper/stated.csv is the one home of the paper's setup; the profile must agree with it key by key."""
    stated = setup(Paper.read(STATED))
    raw = yaml.safe_load(composed("profile=paper"))
    assert len(stated) > 20
    for key, value in stated.items():
        assert value_at(raw, key) == value, key
    assert raw["ski"]["threshold"] == Paper.read(STATED).greedy_threshold()


def test_the_offline_paper_profile_changes_only_the_model_and_what_it_cannot_run() -> None:
    paper, offline = yaml.safe_load(composed("profile=paper")), yaml.safe_load(composed("profile=paper-offline"))
    assert offline["model"]["name"] == "packaged-base"
    assert set(paper["study"]["peft_strategies"]) - set(offline["study"]["peft_strategies"]) == {"prefix"}  # MPNet
    for d in (paper, offline):
        d["model"].pop("name"), d["study"].pop("profile"), d["study"].pop("peft_strategies")
    assert paper == offline


def test_quick_is_a_smaller_default_and_smoke_is_smaller_still() -> None:
    default, quick, smoke = profile("default"), profile("quick"), profile("smoke")
    for small, big in ((quick, default), (smoke, quick)):
        assert small.finetune.steps < big.finetune.steps and 0 < small.data.sst2_subsample < big.data.sst2_subsample
        assert small.features.train_tokens < big.features.train_tokens
    assert len(smoke.study.seeds) == 1 and set(smoke.study.targets) == set(default.study.targets)


def test_an_override_composes_on_top_of_a_profile() -> None:
    p = profile("smoke", "lora.rank=8")
    assert p.lora.rank == 8 and p.study.profile == "smoke"


def test_a_bad_override_is_refused_with_its_key() -> None:
    with pytest.raises(ParamError, match=r"lora.rank"):
        parse_params(yaml.safe_load(composed("lora.rank=0")))
