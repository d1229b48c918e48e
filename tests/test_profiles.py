"""Profiles: params.yaml is the default profile as DVC's Hydra composition writes it; each profile says what it claims."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from inflection_layers.cells import cells
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


def test_the_default_runs_the_papers_adaptation_protocol_on_both_targets() -> None:
    p = profile("default")
    assert (p.finetune.steps, p.finetune.batch_size, p.source.batch_size) == (300, 16, 32)
    assert p.data.sst2_subsample >= 4000 or p.data.sst2_subsample == 0
    assert (p.source.epochs_under, p.source.epochs_over) == (1, 8) and p.study.seeds == [42, 43, 44]
    assert p.study.targets == ["rt", "cr"] and p.ski.random_draws >= 5
    assert len(cells(p)) == 2 * 2 * 3 * (5 + 5 + p.ski.random_draws)


def test_the_paper_profile_is_the_papers_setting() -> None:
    p = profile("paper")
    assert p.model.name == "bert-base-uncased" and p.data.sst2_subsample == 0
    assert {p.source.lr, p.lora.lr, *vars(p.finetune.lr).values()} == {2e-5}
    assert (p.finetune.steps, p.finetune.batch_size, p.lora.rank, p.lora.alpha, p.lora.dropout) == (
        300,
        16,
        4,
        16,
        0.05,
    )
    assert (p.ski.method, p.ski.threshold, p.ski.max_band, p.ski.s) == ("greedy", 0.25, None, 1)
    assert p.finetune.eval_splits == ["validation", "test"] and p.probe.epochs == 20


def test_the_paper_profile_sets_every_value_the_paper_states() -> None:
    """data/paper/stated.csv is the one home of the paper's setup; the profile must agree with it key by key."""
    stated = setup(Paper.read(ROOT / "data" / "paper" / "stated.csv"))
    raw = yaml.safe_load(composed("profile=paper"))
    assert len(stated) > 20
    for key, value in stated.items():
        node = raw
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    assert raw["ski"]["threshold"] == Paper.read(ROOT / "data" / "paper" / "stated.csv").greedy_threshold()


def test_the_offline_paper_profile_changes_only_the_model() -> None:
    paper, offline = yaml.safe_load(composed("profile=paper")), yaml.safe_load(composed("profile=paper-offline"))
    assert offline["model"]["name"] == "packaged-base"
    for d in (paper, offline):
        d["model"].pop("name"), d["study"].pop("profile")
    assert paper == offline


def test_quick_keeps_the_first_small_scale_and_smoke_is_tiny() -> None:
    quick, smoke = profile("quick"), profile("smoke")
    assert (quick.data.sst2_subsample, quick.finetune.steps, quick.study.targets) == (400, 30, ["rt"])
    assert smoke.study.seeds == [42] and smoke.finetune.steps < 10 and smoke.study.targets == ["rt", "cr"]


def test_an_override_composes_on_top_of_a_profile() -> None:
    p = profile("smoke", "lora.rank=8")
    assert p.lora.rank == 8 and p.study.profile == "smoke"


def test_a_bad_override_is_refused_with_its_key() -> None:
    with pytest.raises(ParamError, match="lora.rank"):
        parse_params(yaml.safe_load(composed("lora.rank=0")))
