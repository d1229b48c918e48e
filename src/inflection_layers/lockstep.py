"""Cells of one group trained in lockstep: what is identical across them is computed once per batch.

Every cell of a peft group starts from the same source model, and below its *first modified layer* (the lowest
layer it adapts, or where its attention temperature acts) it computes exactly what the source model computes.
So per batch a *trunk* model (the source model, same mode and precision) runs the embeddings and the layers below
the highest first layer once (:func:`compute_trunk`), and each cell's own forward starts at its first layer: the
modules below are swapped for stubs that return the trunk's outputs (:func:`stubbed`). The model's own forward
still builds the masks and runs the head and the loss, so a cell's logits are its own model's.

Stacking (the mLoRA technique, :func:`stacked_logits`): several LoRA cells' rows concatenated into one pass of
the trunk model, one tall matrix product per frozen projection, each cell's low-rank update and classification
head applied to its own rows by hooks that borrow the cell's own peft modules (so its optimizer, adapter and
saved files stay its own). Whether that is faster depends on the machine: `finetune.cells_per_pass`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from inflection_layers.diagnostics import encoder_parts


class _Stop(Exception):
    """Raised by a hook once the trunk has what it needs: the layers above are never run."""


class _Cached(nn.Module):
    """Stands in for a module: returns the output the trunk computed for it."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


def transformer(model: nn.Module) -> nn.Module:
    """The encoder model (BertModel, MPNetModel) inside a sequence classifier, peft-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "base_model", inner)


def compute_trunk(model: nn.Module, batch: dict[str, Tensor], depth: int) -> list[Any]:
    """The raw outputs of the embeddings and of encoder layers 0 .. depth - 1 of `model` on `batch`, without grad.

    Returns a list of depth + 1 outputs (entry 0: the embeddings', entry i: layer i - 1's, each a tensor or a tuple as
    the module returns it). The layers above are not run.
    """
    emb, layers = encoder_parts(model)
    modules = [emb, *list(layers)[:depth]]
    out: list[Any] = []

    def capture(module: nn.Module, args: Any, output: Any) -> None:
        out.append(output)
        if len(out) == len(modules):
            raise _Stop

    handles = [m.register_forward_hook(capture) for m in modules]
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def repeat_rows(output: Any, times: int) -> Any:
    """A trunk output with its batch rows repeated `times` (tensors in tuples too; other entries unchanged)."""
    if isinstance(output, Tensor):
        return output.repeat(times, *([1] * (output.ndim - 1)))
    if isinstance(output, tuple):
        return tuple(repeat_rows(x, times) for x in output)
    return output


@contextlib.contextmanager
def stubbed(model: nn.Module, trunk: Sequence[Any], first: int) -> Iterator[None]:
    """Within the block `model` starts at layer `first`: its embeddings and lower layers return trunk[0 .. first]."""
    if first > len(trunk) - 1:
        raise ValueError(f"the trunk holds {len(trunk) - 1} layers; a cell starting at layer {first} needs more")
    base = transformer(model)
    layers = base.encoder.layer
    saved_emb, saved = base.embeddings, [layers[i] for i in range(first)]
    base.embeddings = _Cached(trunk[0])
    for i in range(first):
        layers[i] = _Cached(trunk[i + 1])
    try:
        yield
    finally:
        base.embeddings = saved_emb
        for i, m in enumerate(saved):
            layers[i] = m


def lora_modules(model: nn.Module) -> dict[str, LoraLayer]:
    """A peft LoRA model's adapted modules, by name in the unwrapped model.

    Names look like 'bert.encoder.layer.3.attention.self.query'.
    """
    prefix = "base_model.model."
    return {n.removeprefix(prefix): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _lora_delta(layer: LoraLayer, x: Tensor) -> Tensor:
    """The default adapter's low-rank update B A dropout(x) * scaling of a LoRA layer (what its own forward adds)."""
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    return b(a(layer.lora_dropout["default"](x.to(a.weight.dtype)))) * layer.scaling["default"]


@contextlib.contextmanager
def stacked(trunk_model: nn.Module, cells: Sequence[nn.Module], rows: int) -> Iterator[None]:
    """Within the block, a forward of `trunk_model` on len(cells) x `rows` rows applies cell c's LoRA updates and its
    classification head to rows [c * rows, (c + 1) * rows) and the frozen weights to every row."""
    handles = []
    targets = dict(trunk_model.named_modules())
    for c, cell in enumerate(cells):
        part = slice(c * rows, (c + 1) * rows)
        for name, layer in lora_modules(cell).items():

            def add(
                module: nn.Module, args: tuple, output: Tensor, layer: LoraLayer = layer, part: slice = part
            ) -> Tensor:
                delta = _lora_delta(layer, args[0][part])
                return torch.cat([output[: part.start], output[part] + delta.to(output.dtype), output[part.stop :]])

            handles.append(targets[name].register_forward_hook(add))
    heads = [cell.base_model.model.classifier for cell in cells]  # peft's ModulesToSaveWrapper: the cell's own head

    def head(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = args[0]
        return torch.cat([h(x[c * rows : (c + 1) * rows]) for c, h in enumerate(heads)])

    handles.append(trunk_model.classifier.register_forward_hook(head))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def stacked_losses(
    trunk_model: nn.Module, cells: Sequence[nn.Module], trunk: Sequence[Any], first: int, batch: dict[str, Tensor]
) -> list[Tensor]:
    """One pass of `trunk_model` over every cell's copy of the batch, starting at layer `first` from the trunk's
    outputs; returns each cell's mean loss on its own rows (their sum's gradient is each cell's own gradient)."""
    n, rows = len(cells), batch["input_ids"].shape[0]
    tall = {k: repeat_rows(batch[k], n) for k in ("input_ids", "attention_mask")}
    with stacked(trunk_model, cells, rows), stubbed(trunk_model, [repeat_rows(t, n) for t in trunk], first):
        logits = trunk_model(**tall).logits  # (n * rows, C)
    labels = batch["labels"]
    return [F.cross_entropy(logits[c * rows : (c + 1) * rows].float(), labels) for c in range(n)]
