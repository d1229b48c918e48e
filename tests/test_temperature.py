"""The attention-temperature knob on tiny random BERT (eager and SDPA) and MPNet (eager), with and without peft."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import BertForSequenceClassification

from conftest import tiny_config, tiny_mpnet
from inflection_layers.diagnostics import layer_attention_entropy
from inflection_layers.temperature import AttentionTemperature, anneal


def bert(attn: str = "eager") -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config(4)
    config._attn_implementation = attn
    return BertForSequenceClassification(config).eval()


def mpnet() -> torch.nn.Module:
    return tiny_mpnet(4).eval()


def lora(model: torch.nn.Module, targets: list[str]) -> torch.nn.Module:
    torch.manual_seed(1)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=2,
        lora_alpha=4,
        target_modules=targets,
        layers_to_transform=[1, 2],
        layers_pattern="layer",
        init_lora_weights=False,
    )  # random B: the adapter changes the scores
    return get_peft_model(model, config).eval()


MODELS = {
    "bert-eager": lambda: bert("eager"),
    "bert-sdpa": lambda: bert("sdpa"),
    "mpnet": mpnet,
    "bert-lora": lambda: lora(bert("eager"), ["query", "key", "value"]),
    "mpnet-lora": lambda: lora(mpnet(), ["q", "k", "v"]),
}


def logits_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", list(MODELS))
def test_tau_1_changes_nothing_bitwise(name: str, tiny_batch: dict[str, torch.Tensor]) -> None:
    model = MODELS[name]()
    ref_logits, ref_grads = logits_and_grads(model, tiny_batch)
    with AttentionTemperature(model, [1, 2], 1.0):
        logits, grads = logits_and_grads(model, tiny_batch)
    assert torch.equal(logits, ref_logits) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))


def entropies(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(L,) mean attention entropy per layer, eager attention."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = base.config._attn_implementation
    base.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    base.set_attn_implementation(before)
    return layer_attention_entropy(out.attentions, batch["attention_mask"])[0].mean(1)


@pytest.mark.parametrize("name", ["bert-eager", "mpnet", "bert-lora", "mpnet-lora"])
def test_entropy_rises_with_tau_at_the_first_intervened_layer_and_nothing_below_changes(name: str, tiny_batch) -> None:
    model = MODELS[name]()
    ref = entropies(model, tiny_batch)
    seen = []
    for tau in (0.5, 1.0, 2.0, 4.0):
        with AttentionTemperature(model, [2, 3], tau):
            h = entropies(model, tiny_batch)
        torch.testing.assert_close(h[:2], ref[:2], rtol=0, atol=0)  # layers below the band: untouched
        seen.append(float(h[2]))
    assert seen == sorted(seen) and seen[0] < seen[1] < seen[3]


def test_bert_gives_the_same_logits_under_eager_and_sdpa(tiny_batch: dict[str, torch.Tensor]) -> None:
    out = {}
    for impl in ("eager", "sdpa"):
        model = bert(impl)
        with AttentionTemperature(model, [0, 2], 3.0), torch.no_grad():
            out[impl] = model(**tiny_batch).logits
    torch.testing.assert_close(out["eager"], out["sdpa"], rtol=1e-5, atol=1e-6)


def test_with_a_bias_large_tau_drives_attention_to_uniform_not_to_softmax_of_the_bias(tiny_batch) -> None:
    """MPNet adds a relative-position bias: a knob that scaled only the query would leave softmax(bias) as tau grows."""
    model = mpnet()
    with torch.no_grad():
        model.mpnet.encoder.relative_attention_bias.weight.mul_(50.0)  # a bias strong enough to matter
    with AttentionTemperature(model, [0], 1e4), torch.no_grad():
        attn = model(**tiny_batch, output_attentions=True).attentions[0]  # (B, H, T, T)
    n = int(tiny_batch["attention_mask"][1].sum())
    valid = attn[1, :, :n, :n]  # the padded example's valid block
    torch.testing.assert_close(valid, torch.full_like(valid, 1.0 / n), rtol=0, atol=1e-3)
    h = layer_attention_entropy([attn], tiny_batch["attention_mask"])[0]
    assert float(h.min()) > 0.999 * math.log(4)  # every head at (nearly) the maximum entropy of its rows


@pytest.mark.parametrize(("start", "steps"), [(1.5, 100), (1.7, 3), (0.5, 7), (2.0, 1)])
def test_an_annealing_schedule_ends_at_exactly_1(start: float, steps: int) -> None:
    tau = anneal(start, steps)
    assert tau(0) == start and tau(steps) == 1.0 and tau(steps + 5) == 1.0
    values = [tau(s) for s in range(steps + 1)]
    assert values == sorted(values, reverse=start > 1)


def test_a_schedule_follows_the_step_and_removal_restores_the_model(tiny_batch: dict[str, torch.Tensor]) -> None:
    model = bert()
    with torch.no_grad():
        ref = model(**tiny_batch).logits
    knob = AttentionTemperature(model, [1], anneal(2.0, 4))
    with torch.no_grad():
        first = model(**tiny_batch).logits
        knob.step = 4
        last = model(**tiny_batch).logits
    knob.remove()
    with torch.no_grad():
        after = model(**tiny_batch).logits
    assert not torch.equal(first, ref) and torch.equal(last, ref) and torch.equal(after, ref)


def test_layers_outside_the_model_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        AttentionTemperature(bert(), [4], 2.0)
