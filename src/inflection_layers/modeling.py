"""One way to load every model of the study.

Where `model.name` points and the table of architecture families are :mod:`inflection_layers.archs`'
(no torch there). Weights load only from safetensors,
never with trust_remote_code; a checkpoint with non-finite weights is refused, naming its file.
Models load with SDPA attention where the architecture has it (MPNet has not: eager); the
diagnostics switch to eager attention for the forward passes that record attention probabilities
(:func:`attention`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from inflection_layers.archs import arch, resolve_model_path
from inflection_layers.artifacts import writer_of
from inflection_layers.errors import ModelError

logger = logging.getLogger(__name__)

CHECKPOINT_PARAMS = "params.json"
# how transformers words "this architecture has no SDPA attention" (MPNet: "... through
# torch.nn.functional.scaled_dot_product_attention yet"): load_model then falls back to eager
SDPA_REFUSALS = ("sdpa", "scaled_dot_product_attention")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # torch.save / pickle formats: never loaded

hf_logging.set_verbosity_error()  # the expected "classifier MISSING" load report: we log one line instead
hf_logging.disable_progress_bar()
# peft's PeftModel reads `model.is_gradient_checkpointing`, which transformers deprecates with a FutureWarning at
# every LoRA cell; the study never uses gradient checkpointing, so the warning says nothing to the user.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _rebuild(path: Path) -> str:
    """How to rebuild a damaged checkpoint file: the stage of dvc.lock that writes it, or what it is."""
    stage = writer_of(path)
    return (
        f"it is written by stage {stage}: rerun `dvc repro -f {stage}`"
        if stage
        else "delete it and rerun the stage that writes it"
    )


def _format_of(head: bytes) -> str | None:
    """What a file that is not safetensors is, from its first bytes: a pickle, or torch.save's zip archive."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (torch.save's legacy format)"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save's format)"
    return None


def check_safetensors(path: Path) -> None:
    """Refuse a truncated, corrupt or foreign file named *.safetensors before any library reads it.

    The format is an 8-byte little-endian header length n, n bytes of JSON header (an object, so it starts
    with '{') giving each tensor's ``data_offsets`` [begin, end) into the data block, then the data block; a
    complete file is exactly 8 + n + max(end) bytes. Raises :class:`ModelError` naming the file and its writer.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if (kind := _format_of(head)) or (len(head) == 9 and head[8:9] != b"{"):
            raise ModelError(
                f"{path}: not a safetensors file ({kind or 'no JSON header after its first 8 bytes'}); {_rebuild(path)}"
            )
        if len(head) < 8:
            raise ModelError(
                f"{path}: truncated safetensors file ({size} bytes, shorter than its 8-byte header length); "
                f"{_rebuild(path)}"
            )
        n = int.from_bytes(head[:8], "little")
        if n > size - 8:
            raise ModelError(
                f"{path}: truncated safetensors file (a header of {n:,} bytes announced, {size - 8:,} follow); "
                f"{_rebuild(path)}"
            )
        f.seek(8)
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ModelError(f"{path}: corrupt safetensors header ({type(e).__name__}: {e}); {_rebuild(path)}") from e
    if 8 + n + end != size:
        raise ModelError(
            f"{path}: truncated safetensors file (expected {8 + n + end:,} bytes from its header, found {size:,}); "
            f"{_rebuild(path)}"
        )


def _is_local(path: str) -> bool:
    return Path(path).is_dir()


def _check_finite(model: nn.Module, where: str) -> None:
    """Refuse weights with NaN or infinite values, naming the file they came from and the stage that writes it."""
    for pname, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(
                f"{where}: parameter {pname} holds non-finite values (NaN or inf); {_rebuild(Path(where))}"
            )


def load_model(name: str, num_labels: int = 2, attn: str | None = None) -> PreTrainedModel:
    """A sequence classifier from safetensors only, with SDPA attention where supported (else eager).

    The classifier head is freshly initialised when the weights have none: call
    :func:`seed_everything` first to make it reproducible.
    """
    path = resolve_model_path(name)
    local = _is_local(path)
    weights: list[Path] = []
    if local:
        weights = sorted(Path(path).glob("*.safetensors"))
        if not weights:
            pickles = sorted(q.name for pattern in PICKLE_WEIGHTS for q in Path(path).glob(pattern))
            found = (
                f"; found {', '.join(pickles)}, pickle files that are never loaded (they can run code)"
                if pickles
                else ""
            )
            raise ModelError(f"{path}: no *.safetensors weights{found}; save the model with safe_serialization=True")
        for w in weights:
            check_safetensors(w)
    kwargs: dict[str, Any] = {
        "num_labels": num_labels,
        "use_safetensors": True,
        "trust_remote_code": False,
        "local_files_only": local,
    }
    model = None
    for impl in [attn] if attn else ["sdpa", "eager"]:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=impl, **kwargs)
            break
        except ValueError as e:
            if attn or impl == "eager" or not any(w in str(e).lower() for w in SDPA_REFUSALS):
                raise ModelError(f"could not load model {name!r} from {path}: {str(e).splitlines()[0]}") from e
        except OSError as e:
            raise ModelError(f"could not load model {name!r} from {path}: {str(e).splitlines()[0]}") from e
    assert model is not None
    arch(model)
    _check_finite(model, str(weights[0]) if weights else name)
    logger.info(
        "loaded %s: %s, %d layers, width %d, %s attention",
        name,
        model.config.model_type,
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config._attn_implementation,
    )
    return model


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer that belongs to `model.name` (or to a saved checkpoint)."""
    path = resolve_model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=_is_local(path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer of {name!r} from {path}: {str(e).splitlines()[0]}") from e


def base_of(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def attention(model: nn.Module, impl: str) -> Iterator[None]:
    """Run the block with another attention implementation (eager: the one that returns probabilities)."""
    base = base_of(model)
    before = base.config._attn_implementation
    if before != impl:
        base.set_attn_implementation(impl)
    try:
        yield
    finally:
        if before != impl:
            base.set_attn_implementation(before)


def save_checkpoint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, params: dict[str, Any]
) -> None:
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
    """CUDA when present, else CPU with one intra-op thread per core this process may use: a Slurm job's
    allocation (SLURM_CPUS_PER_TASK), else the CPUs of its affinity mask."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    torch.set_num_threads(max(1, min(cores, int(allocated)) if allocated.isdigit() else cores))
    return torch.device("cpu")
