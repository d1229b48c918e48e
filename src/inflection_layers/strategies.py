"""Adaptation strategies: each a small, named definition of what is trainable on the target task.

Plain cells (stage `finetune`): ``none`` (nothing), ``head`` (the classification head), ``shallow`` (top
`finetune.shallow_k` encoder layers + pooler where the model has one + head), ``full`` (everything), ``bitfit``
(every bias + head). peft cells (stage `finetune_peft`): LoRA on `lora.targets` of a band + head, the band
given by a selector (``lora_selective``: the SKI band; ``lora_all``: every layer; ``lora_random_<d>``: random
band d of the SKI band's size; ``lora_top``: the top k layers; ``lora_complement``, ``lora_rgn``, ``lora_cka``:
the rival selectors), (IA)^3 (``ia3_all``, ``ia3_selective``: the SKI band) and prefix tuning (``prefix``,
`finetune.prefix_tokens` virtual tokens). Intervention cells (stage `finetune_tau`) are selective LoRA under the
attention temperature (:mod:`inflection_layers.temperature`).

Which layers a cell adapts is data computed by `select` (:func:`adapted_layers`); the architecture's module
names come from :data:`inflection_layers.archs.ARCHS`; peft reports what it wrapped (:func:`targeted_modules`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from torch import nn

from inflection_layers.archs import arch
from inflection_layers.cells import IA3_STRATEGIES, LORA_STRATEGIES, TAU_STRATEGIES, family
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


def adapted_layers(strategy: str, num_layers: int, selection: dict | None) -> list[int]:
    """The encoder layers a peft cell adapts, from the `select` stage's JSON of its group ([] for plain cells).

    LoRA and IA3 on every layer, or on a selector's band; prefix tuning acts on every layer's attention; the
    intervention cells adapt the SKI band.
    """
    name = family(strategy)
    if name in ("lora_all", "ia3_all", "prefix"):
        return list(range(num_layers))
    if name not in LORA_STRATEGIES + IA3_STRATEGIES + TAU_STRATEGIES:
        return []
    if selection is None:
        raise ValueError(f"{strategy} needs the group's selection JSON")
    if name == "lora_random":
        return list(selection["random"][int(strategy.rpartition("_")[2])]["layers"])
    return list(selection[SELECTION_KEYS.get(name, "band")])


def _plain(model: nn.Module, name: str, shallow_k: int) -> nn.Module:
    """Freeze everything but what a plain strategy trains."""
    a = arch(model)
    num_layers = model.config.num_hidden_layers

    def head(n: str) -> bool:
        return n.startswith(a.head)

    if name == "shallow":
        if not 1 <= shallow_k <= num_layers:
            raise ValueError(f"finetune.shallow_k = {shallow_k} must be in [1, {num_layers}] for this model")
        top = set(range(num_layers - shallow_k, num_layers))

        def keep(n: str) -> bool:
            m = _LAYER.search(n)
            return head(n) or n.startswith(a.shallow_extra) or bool(m and int(m.group(1)) in top)

        return _freeze_all_but(model, keep)
    keep_of = {
        "none": lambda n: False,
        "head": head,
        "full": lambda n: True,
        "bitfit": lambda n: head(n) or n.endswith(".bias"),
    }
    return _freeze_all_but(model, keep_of[name])


def layer_regex(layers: list[int], modules: tuple[str, ...]) -> str:
    """A peft target regex (matched in full against module names) for `modules` inside the encoder `layers`."""
    alternatives = "|".join(m.replace(".", r"\.") for m in modules)
    return rf".*\.layer\.({'|'.join(str(x) for x in sorted(layers))})\.({alternatives})"


def peft_config(model: nn.Module, name: str, *, lora: Lora | None, layers: list[int], prefix_tokens: int | None):
    """The peft config of a peft family on `layers` (LoRA: `lora.*`; IA3: keys, values and feed-forward output)."""
    a = arch(model)
    bad = [x for x in layers if not 0 <= x < model.config.num_hidden_layers]
    if not layers or bad:
        raise ValueError(
            f"{name} needs a non-empty list of layers in [0, {model.config.num_hidden_layers - 1}], got {layers!r}"
        )
    if name in IA3_STRATEGIES:  # peft's IA3Config has no layers_to_transform: the band is in the regex
        return IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=layer_regex(layers, a.ia3_targets),
            feedforward_modules=layer_regex(layers, a.ia3_feedforward),
        )
    if name == "prefix":
        if not a.prefix:
            raise ValueError(f"prefix tuning needs past_key_values, which {model.config.model_type} does not take")
        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=prefix_tokens)
    if lora is None:
        raise ValueError(f"{name} needs the lora.* params")
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,  # keeps (and trains) the classification head: modules_to_save
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=sorted(a.lora_targets[t] for t in lora.targets),
        layers_to_transform=sorted(layers),
        layers_pattern="layer",
    )


def apply_strategy(
    model: nn.Module,
    strategy: str,
    *,
    shallow_k: int,
    lora: Lora | None = None,
    layers: list[int] | None = None,
    prefix_tokens: int | None = None,
) -> nn.Module:
    """Make exactly the strategy's parameters trainable; peft cells return a peft model (`layers`: what it adapts)."""
    name = family(strategy)
    if name in ("none", "head", "shallow", "full", "bitfit"):
        return _plain(model, name, shallow_k)
    if name not in LORA_STRATEGIES + IA3_STRATEGIES + TAU_STRATEGIES + ("prefix",):
        raise ValueError(f"unknown strategy {strategy!r}")
    return get_peft_model(
        model, peft_config(model, name, lora=lora, layers=list(layers or []), prefix_tokens=prefix_tokens)
    )


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Name -> size of every trainable parameter (peft's names for LoRA models)."""
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def targeted_modules(model: nn.Module) -> list[str]:
    """peft's `targeted_module_names` (the adapted modules), [] for plain strategies; for prefix tuning, which
    wraps no module, the keys and values it prepends to in every layer's self-attention."""
    if not isinstance(model, PeftModel):
        return []
    if model.peft_config[model.active_adapter].is_prompt_learning:
        config = model.peft_config[model.active_adapter]
        return [
            f"prefix: {config.num_virtual_tokens} virtual tokens prepended to the keys and values of layers "
            f"0-{config.num_layers - 1}"
        ]
    return sorted(model.targeted_module_names)
