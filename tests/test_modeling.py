"""The one model loader and the architecture table: the packaged MiniLM offline, SDPA where supported,
checkpoints as safetensors, damaged or missing models as one clear error; the head's forward per family."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification

from conftest import tiny_config, tiny_mpnet
from inflection_layers.archs import PACKAGED, arch, resolve_model_path
from inflection_layers.errors import ModelError
from inflection_layers.modeling import attention, load_model, load_tokenizer, save_checkpoint


def test_packaged_model_loads_offline_with_one_attention_tensor_per_layer() -> None:
    """Run in a fresh interpreter with the hub switched off, as a user without network would."""
    code = (
        "import torch; from inflection_layers.modeling import load_model, load_tokenizer, attention;"
        "m = load_model('packaged'); t = load_tokenizer('packaged');"
        "b = t(['a fine film .', 'dull'], return_tensors='pt', padding=True);"
        "print(m.config._attn_implementation);"
        "ctx = attention(m, 'eager'); ctx.__enter__(); "
        "out = m(**b, output_attentions=True); ctx.__exit__(None, None, None);"
        "c = m.config; n = sum(p.numel() for n, p in m.named_parameters() if not n.startswith('classifier'));"
        "print(len(out.attentions), tuple(out.attentions[0].shape[:2]), c.num_hidden_layers, c.hidden_size, n)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-7:] == ["sdpa", "6", "(2,", "12)", "6", "384", "22713216"]
    assert "LOAD REPORT" not in out.stdout + out.stderr  # the expected missing classifier is not reported as a block


def test_checkpoint_round_trip_is_safetensors(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(PACKAGED)
    save_checkpoint(tiny_bert, tokenizer, tmp_path, {"seed": 1})
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    again = load_model(str(tmp_path))
    for (n, a), (_, b) in zip(tiny_bert.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert again.config._attn_implementation == "sdpa"


def test_directory_without_safetensors_is_refused(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tiny_bert.config.save_pretrained(tmp_path)
    torch.save(tiny_bert.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"no \*.safetensors"):
        load_model(str(tmp_path))


def test_truncated_weights_are_a_clear_error(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tiny_bert.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match=r"model.safetensors: truncated safetensors file"):
        load_model(str(tmp_path))


def test_non_finite_weights_are_refused_naming_the_file(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tiny_bert.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if "word_embeddings" in k)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"model\.safetensors: parameter .*word_embeddings.* non-finite"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("./no_such_dir", "not an existing directory"),
        ("/no/such/model/dir", "not an existing directory"),
        ("nosuchorg/nosuchmodel", "neither an existing directory nor in the local hub cache"),
    ],
)
def test_a_model_that_is_neither_a_folder_nor_reachable_is_one_line(
    name: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=match) as err:
        resolve_model_path(name)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"without config.json"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_head_forward_reproduces_the_models_own_logits(family: str, tiny_batch: dict[str, torch.Tensor]) -> None:
    """The frozen-encoder strategies feed the head cached first-token states: it must give the model's logits."""
    torch.manual_seed(0)
    model = (BertForSequenceClassification(tiny_config()) if family == "bert" else tiny_mpnet()).eval()
    batch = {k: v for k, v in tiny_batch.items() if k != "labels"}
    if family == "mpnet":
        batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        logits = arch(model).head_forward(model, out.hidden_states[-1][:, :1])
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-6)


def test_attention_switch_returns_to_the_loaded_kernel(tiny_batch: dict[str, torch.Tensor]) -> None:
    config = tiny_config()
    config._attn_implementation = "sdpa"
    model = BertForSequenceClassification(config).eval()
    with attention(model, "eager"):
        assert model.config._attn_implementation == "eager"
        assert len(model(**tiny_batch, output_attentions=True).attentions) == 3
    assert model.config._attn_implementation == "sdpa"


def test_an_architecture_without_sdpa_loads_with_eager_attention(tmp_path: Path) -> None:
    """MPNet has no SDPA kernel in transformers: loading falls back to eager instead of failing (the base encoder)."""
    tiny_mpnet().save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert model.config.model_type == "mpnet" and model.config._attn_implementation == "eager"


def test_an_unknown_family_is_refused() -> None:
    with pytest.raises(ModelError, match="not supported"):
        arch(torch.nn.Linear(2, 2))
