"""Shared fixtures: a tiny random-weight BERT, as in transformers' own tests (no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification


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
