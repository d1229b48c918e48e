"""Adaptation strategies: each a small, named definition of what is trainable on the target task.

| strategy         | trainable                                                                   |
|------------------|-----------------------------------------------------------------------------|
| none             | nothing: the source model evaluated as it is                                |
| head             | the classification head                                                     |
| shallow          | top `k` encoder layers + pooler (where the model has one) + head (paper: k = 2) |
| full             | everything                                                                  |
| bitfit           | every bias + head                                                           |
| lora_selective   | peft LoRA on `lora.targets` of the SKI band + head                          |
| lora_all         | the same LoRA on every layer + head                                         |
| lora_random_<d>  | the same LoRA on random band d of the SKI band's size + head (the control)  |
| lora_top         | the same LoRA on the top k layers, k = the SKI band's size (the naive band)  |
| lora_complement  | the same LoRA on the layers SKI rates lowest, outside its band              |
| lora_rgn         | the same LoRA on the top layers by relative gradient norm (Auto-RGN)        |
| lora_cka         | the same LoRA on the top layers by representation change (1 - CKA in/out)   |

Which layers each LoRA strategy adapts is data computed by `select` (:func:`lora_layers`); the
architecture's module names come from :data:`inflection_layers.archs.ARCHS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from inflection_layers.archs import arch
from inflection_layers.cells import family, is_lora
from inflection_layers.config import Lora

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"\.layer\.(\d+)\.")
SELECTION_KEYS = {  # LoRA family -> its key in the selection JSON of `select`
    "lora_selective": "band",
    "lora_top": "top",
    "lora_complement": "complement",
    "lora_rgn": "rgn",
    "lora_cka": "cka",
}


def _freeze_all_but(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))
    return model


def lora_layers(strategy: str, num_layers: int, selection: dict) -> list[int]:
    """The encoder layers a LoRA strategy adapts, from the `select` stage's JSON of its group."""
    name = family(strategy)
    if name == "lora_all":
        return list(range(num_layers))
    if name == "lora_random":
        draw = int(strategy.rpartition("_")[2])
        return list(selection["random"][draw]["layers"])
    return list(selection[SELECTION_KEYS[name]])


def apply_strategy(
    model: nn.Module, strategy: str, *, shallow_k: int, lora: Lora | None = None, layers: list[int] | None = None
) -> nn.Module:
    """Make exactly the strategy's parameters trainable; LoRA strategies return a peft model.

    `layers` are the encoder layers LoRA adapts (peft's `layers_to_transform`), required for LoRA.
    """
    a = arch(model)
    num_layers = model.config.num_hidden_layers
    head = lambda n: n.startswith(a.head)  # noqa: E731
    name = family(strategy)
    if name == "none":
        return _freeze_all_but(model, lambda n: False)
    if name == "head":
        return _freeze_all_but(model, head)
    if name == "full":
        return _freeze_all_but(model, lambda n: True)
    if name == "bitfit":
        return _freeze_all_but(model, lambda n: head(n) or n.endswith(".bias"))
    if name == "shallow":
        if not 1 <= shallow_k <= num_layers:
            raise ValueError(f"finetune.shallow_k = {shallow_k} must be in [1, {num_layers}] for this model")
        top = set(range(num_layers - shallow_k, num_layers))

        def keep(n: str) -> bool:
            m = _LAYER.search(n)
            return head(n) or n.startswith(a.shallow_extra) or bool(m and int(m.group(1)) in top)

        return _freeze_all_but(model, keep)
    if not is_lora(strategy):
        raise ValueError(f"unknown strategy {strategy!r}")
    if lora is None or not layers:
        raise ValueError(f"{strategy} needs LoRA params and a non-empty list of layers, got {layers!r}")
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise ValueError(f"LoRA layers {bad} outside [0, {num_layers - 1}]")
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # keeps (and trains) the classification head: modules_to_save
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=sorted(a.lora_targets[t] for t in lora.targets),
        layers_to_transform=sorted(layers),
        layers_pattern="layer",
    )
    return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Name -> size of every trainable parameter (peft's names for LoRA models)."""
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def targeted_modules(model: nn.Module) -> list[str]:
    """peft's `targeted_module_names` (the adapted modules), [] for non-LoRA strategies."""
    return sorted(model.targeted_module_names) if isinstance(model, PeftModel) else []
