"""Adaptation strategies: each a small, named definition of what is trainable on the target task.

| strategy        | trainable                                                        |
|-----------------|------------------------------------------------------------------|
| none            | nothing: the source model evaluated as it is                     |
| head            | classifier                                                       |
| shallow         | top `k` encoder layers + pooler + classifier (paper: k = 2)      |
| full            | everything                                                       |
| bitfit          | every bias + classifier                                          |
| lora_selective  | peft LoRA on query/key/value of the SKI band + classifier        |
| lora_all        | the same LoRA on every layer + classifier                        |
| lora_random     | the same LoRA on the equal-size random band + classifier         |
"""

from __future__ import annotations

import logging
import re

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from inflection_layers.config import LORA_STRATEGIES, STRATEGIES, Lora

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"\.layer\.(\d+)\.")


def _freeze_all_but(model: nn.Module, keep: callable) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))
    return model


def lora_layers(strategy: str, num_layers: int, band: list[int], random_band: list[int]) -> list[int]:
    """The encoder layers a LoRA strategy adapts."""
    return {"lora_selective": band, "lora_all": list(range(num_layers)), "lora_random": random_band}[strategy]


def apply_strategy(
    model: nn.Module,
    strategy: str,
    *,
    shallow_k: int = 2,
    lora: Lora | None = None,
    layers: list[int] | None = None,
) -> nn.Module:
    """Make exactly the strategy's parameters trainable; LoRA strategies return a peft model.

    `layers` are the encoder layers LoRA adapts (peft's `layers_to_transform`), required for LoRA.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    num_layers = model.config.num_hidden_layers
    if strategy == "none":
        return _freeze_all_but(model, lambda n: False)
    if strategy == "head":
        return _freeze_all_but(model, lambda n: n.startswith("classifier."))
    if strategy == "full":
        return _freeze_all_but(model, lambda n: True)
    if strategy == "bitfit":
        return _freeze_all_but(model, lambda n: n.startswith("classifier.") or n.endswith(".bias"))
    if strategy == "shallow":
        if not 1 <= shallow_k <= num_layers:
            raise ValueError(f"finetune.shallow_k = {shallow_k} must be in [1, {num_layers}] for this model")
        top = set(range(num_layers - shallow_k, num_layers))

        def keep(n: str) -> bool:
            m = _LAYER.search(n)
            return n.startswith(("classifier.", "bert.pooler.")) or ".pooler." in n or bool(m and int(m.group(1)) in top)

        return _freeze_all_but(model, keep)
    assert strategy in LORA_STRATEGIES
    if lora is None or not layers:
        raise ValueError(f"{strategy} needs LoRA params and a non-empty list of layers, got {layers!r}")
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise ValueError(f"LoRA layers {bad} outside [0, {num_layers - 1}]")
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # keeps (and trains) the classifier: modules_to_save
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
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
