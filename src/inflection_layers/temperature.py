"""The attention-temperature knob: divide chosen layers' full attention scores by tau before the softmax.

The full score of a head is q k^T / sqrt(d) + bias + mask (MPNet adds a relative-position bias; padding adds
a large negative mask). Dividing *all* of it by tau is the intervention: tau > 1 softens attention towards
uniform, tau < 1 sharpens it. It is done with two hooks per layer, on the modules :data:`inflection_layers.archs.ARCHS`
names, so one implementation serves BERT (eager and SDPA attention) and MPNet (eager), with or without peft:

- a forward hook on the query projection divides its output (with LoRA, the adapted query) by tau;
- a forward pre-hook on the self-attention module divides the additive float mask and position bias by tau
  (a boolean mask is left as it is: it has no magnitude).

At tau = 1 both hooks return None, so the model computes exactly what it computes without them. tau can follow a
schedule (a tau per training step, :func:`anneal`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from inflection_layers.archs import arch
from inflection_layers.diagnostics import encoder_parts

SCALED_KWARGS = ("attention_mask", "position_bias")  # the additive parts of the score, by name


def anneal(start: float, steps: int) -> Callable[[int], float]:
    """tau falling linearly from `start` at step 0 to exactly 1.0 at step `steps`, then 1.0 (the debiasing phase)."""
    if steps < 1:
        raise ValueError(f"an annealing schedule needs at least 1 step, got {steps}")
    return lambda step: 1.0 if step >= steps else start + (1.0 - start) * step / steps


class AttentionTemperature:
    """tau on the attention of `layers` of a (possibly peft-wrapped) encoder; a constant or a schedule over steps.

    Usage: ``knob = AttentionTemperature(model, [3, 4], 2.0)`` ... ``knob.step = s`` before each training step when
    tau follows a schedule ... ``knob.remove()``. While attached, ``knob.tau`` is the temperature in force.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], tau: float | Callable[[int], float]) -> None:
        a = arch(model)
        _, blocks = encoder_parts(model)
        bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
        if bad:
            raise ValueError(f"temperature layers {bad} outside [0, {len(blocks) - 1}]")
        self.layers = sorted(set(layers))
        self.schedule = tau if callable(tau) else (lambda step, t=float(tau): t)
        self.step = 0
        self._handles = []
        for layer in self.layers:
            block = blocks[layer]
            self._handles.append(block.get_submodule(a.query).register_forward_hook(self._scale_query))
            attention = block.get_submodule(a.self_attention)
            self._handles.append(attention.register_forward_pre_hook(self._scale_additive, with_kwargs=True))

    @property
    def tau(self) -> float:
        return float(self.schedule(self.step))

    def _scale_query(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        tau = self.tau
        return None if tau == 1.0 else output / tau

    def _scale_additive(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        tau = self.tau
        if tau == 1.0:
            return None

        def scaled(x: Any) -> Any:
            return x / tau if isinstance(x, Tensor) and x.is_floating_point() else x

        args = (args[0], *(scaled(x) for x in args[1:]))  # MPNet passes (hidden, mask, position_bias)
        kwargs = {k: scaled(v) if k in SCALED_KWARGS else v for k, v in kwargs.items()}
        return args, kwargs

    def remove(self) -> None:
        """Detach the hooks: the model is the ordinary architecture again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> AttentionTemperature:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
