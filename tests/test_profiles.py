"""Profiles: params.yaml is the default profile as DVC's Hydra composition writes it, and every profile validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from inflection_layers.config import ParamError, parse_params

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (ROOT / "src/inflection_layers/conf/profile").glob("*.yaml"))


def composed(*overrides: str) -> str:
    """params.yaml's text as `dvc exp run -S ...` writes it (dvc.utils.hydra.compose_and_dump)."""
    with initialize_config_module("inflection_layers.conf", version_base=None):
        return OmegaConf.to_yaml(compose(config_name="config", overrides=list(overrides)))


def test_committed_params_are_the_default_profile_byte_for_byte() -> None:
    """Otherwise the first `dvc exp run` would silently change the study."""
    assert (ROOT / "params.yaml").read_text() == composed()


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates_and_names_itself(profile: str) -> None:
    params = parse_params(yaml.safe_load(composed(f"profile={profile}")))
    assert params.study.profile == profile


def test_profiles_differ_where_they_should() -> None:
    assert PROFILES == ["default", "paper", "smoke"]
    default, paper, smoke = (parse_params(yaml.safe_load(composed(f"profile={p}"))) for p in PROFILES)
    assert paper.model.name == "bert-base-uncased" and paper.data.sst2_subsample == 0
    assert (paper.source.lr, paper.finetune.lr, paper.lora.lr, paper.finetune.steps) == (2e-5, 2e-5, 2e-5, 300)
    assert paper.finetune.eval_splits == ["rt_validation", "rt_test"]
    assert default.model.name == "packaged" and default.study.seeds == [42, 43, 44]
    assert len(default.study.cells()) == 48 and len(smoke.study.cells()) == 16


def test_an_override_composes_on_top_of_a_profile() -> None:
    params = parse_params(yaml.safe_load(composed("profile=smoke", "lora.rank=8")))
    assert params.lora.rank == 8 and params.study.profile == "smoke"


def test_a_bad_override_is_refused_with_its_key() -> None:
    with pytest.raises(ParamError, match="lora.rank"):
        parse_params(yaml.safe_load(composed("lora.rank=0")))
