"""The one model loader: the packaged MiniLM offline, checkpoints round-trip as safetensors, pickle refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inflection_layers.modeling import PACKAGED, load_model, load_tokenizer, resolve_model_path, save_checkpoint


def test_packaged_model_loads_offline_with_one_attention_tensor_per_layer() -> None:
    """Run in a fresh interpreter with the hub switched off, as a user without network would."""
    code = (
        "import torch; from inflection_layers.modeling import load_model, load_tokenizer;"
        "m = load_model('packaged'); t = load_tokenizer('packaged');"
        "b = t(['a fine film .', 'dull'], return_tensors='pt', padding=True);"
        "out = m(**b, output_attentions=True);"
        "c = m.config; n = sum(p.numel() for n, p in m.named_parameters() if not n.startswith('classifier'));"
        "print(len(out.attentions), tuple(out.attentions[0].shape[:2]), c.num_hidden_layers, c.hidden_size, n)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-6:] == ["6", "(2,", "12)", "6", "384", "22713216"]


def test_checkpoint_round_trip_is_safetensors(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(PACKAGED)
    save_checkpoint(tiny_bert, tokenizer, tmp_path, {"seed": 1})
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    again = load_model(str(tmp_path))
    for (n, a), (_, b) in zip(tiny_bert.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    assert again.config._attn_implementation == "eager"


def test_directory_without_safetensors_is_refused(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tiny_bert.config.save_pretrained(tmp_path)
    torch.save(tiny_bert.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_model(str(tmp_path))


def test_truncated_weights_are_a_clear_error(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    tiny_bert.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="could not load model"):
        load_model(str(tmp_path))


def test_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_model_path(str(tmp_path))
