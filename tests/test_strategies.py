"""Strategies on tiny random BERT and MPNet models: exact trainable names and counts (LoRA, IA3, prefix), the
adapted modules per architecture, one step changes only what is trainable, and every strategy sees the same batches."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import params_with, tiny_config, tiny_mpnet
from inflection_layers.adapt import CellRun, GroupData, train_runs
from inflection_layers.cells import Cell, Group
from inflection_layers.config import Lora
from inflection_layers.precision import Precision
from inflection_layers.strategies import adapted_layers, apply_strategy, targeted_modules, trainable_parameters
from inflection_layers.training import batch_stream

H, I, L = 32, 37, 3  # tiny_config: hidden, intermediate, layers
CLASSIFIER = H * 2 + 2
POOLER = H * H + H
LAYER = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H  # q, k, v, attn-out; FFN in, out; 2 LayerNorms
LAYER_BIASES = 4 * H + I + H + 2 * H  # q, k, v, attn-out, FFN in, FFN out, LayerNorm biases
EMB_BIASES = H  # embeddings LayerNorm bias
MPNET_HEAD = H * H + H + H * 2 + 2  # dense + out_proj
LORA = Lora(rank=2, alpha=4, dropout=0.0, targets=["query", "key", "value"], lr=1e-3)


def lora_per_layer(r: int, hidden: int, targets: int = 3) -> int:
    """LoRA A (r, d) + B (d, r) on each of `targets` square projections of width `hidden`."""
    return targets * r * 2 * hidden


def build(strategy: str, layers: list[int] | None = None, arch: str = "bert") -> torch.nn.Module:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(L)) if arch == "bert" else tiny_mpnet(L)
    return apply_strategy(model, strategy, shallow_k=2, lora=LORA, layers=layers, prefix_tokens=5)


IA3_BERT = H + H + I  # key and value outputs (H each), the feed-forward output's input (I); not attention.output.dense
PREFIX = 5 * L * 2 * H  # 5 virtual tokens' key and value in every layer


@pytest.mark.parametrize(
    ("strategy", "layers", "expected"),
    [
        ("none", None, 0),
        ("head", None, CLASSIFIER),
        ("shallow", None, 2 * LAYER + POOLER + CLASSIFIER),
        ("bitfit", None, L * LAYER_BIASES + EMB_BIASES + H + CLASSIFIER),  # + pooler bias
        ("lora_selective", [0, 2], 2 * lora_per_layer(2, H) + CLASSIFIER),
        ("lora_all", [0, 1, 2], 3 * lora_per_layer(2, H) + CLASSIFIER),
        ("lora_random_3", [1], lora_per_layer(2, H) + CLASSIFIER),
        ("lora_complement", [1], lora_per_layer(2, H) + CLASSIFIER),
        ("lora_rgn", [0], lora_per_layer(2, H) + CLASSIFIER),
        ("lora_cka", [2], lora_per_layer(2, H) + CLASSIFIER),
        ("lora_top", [1, 2], 2 * lora_per_layer(2, H) + CLASSIFIER),
        ("ia3_all", [0, 1, 2], 3 * IA3_BERT + CLASSIFIER),
        ("ia3_selective", [1], IA3_BERT + CLASSIFIER),
        ("prefix", [0, 1, 2], PREFIX + CLASSIFIER),
    ],
)
def test_exact_trainable_counts_bert(strategy: str, layers: list[int] | None, expected: int) -> None:
    assert sum(trainable_parameters(build(strategy, layers)).values()) == expected


@pytest.mark.parametrize(
    ("strategy", "layers", "expected"),
    [
        ("head", None, MPNET_HEAD),
        ("shallow", None, 2 * LAYER + MPNET_HEAD),  # no pooler in MPNet
        ("lora_selective", [0, 2], 2 * lora_per_layer(2, H) + MPNET_HEAD),
        ("lora_all", [0, 1, 2], 3 * lora_per_layer(2, H) + MPNET_HEAD),
        ("ia3_all", [0, 1, 2], 3 * IA3_BERT + MPNET_HEAD),
        ("ia3_selective", [0, 2], 2 * IA3_BERT + MPNET_HEAD),
    ],
)
def test_exact_trainable_counts_mpnet(strategy: str, layers: list[int] | None, expected: int) -> None:
    assert sum(trainable_parameters(build(strategy, layers, "mpnet")).values()) == expected


def test_mpnet_lora_adapts_q_k_v_of_the_band() -> None:
    model = build("lora_selective", [0, 2], "mpnet")
    assert targeted_modules(model) == sorted(
        f"mpnet.encoder.layer.{l}.attention.attn.{m}" for l in (0, 2) for m in "qkv"
    )


@pytest.mark.parametrize(
    ("strategy", "layers", "arch", "modules"),
    [
        ("ia3_all", [0, 1, 2], "bert", ["attention.self.key", "attention.self.value", "output.dense"]),
        ("ia3_selective", [1], "bert", ["attention.self.key", "attention.self.value", "output.dense"]),
        ("ia3_selective", [0, 2], "mpnet", ["attention.attn.k", "attention.attn.v", "output.dense"]),
        ("lora_top", [1, 2], "bert", ["attention.self.key", "attention.self.query", "attention.self.value"]),
    ],
)
def test_the_adapted_modules_of_each_peft_strategy(
    strategy: str, layers: list[int], arch: str, modules: list[str]
) -> None:
    """IA3 scales keys, values and the feed-forward output (never attention.output.dense, which the suffix
    'output.dense' would also match); selective cells touch only the band's layers."""
    root = "bert" if arch == "bert" else "mpnet"
    assert targeted_modules(build(strategy, layers, arch)) == sorted(
        f"{root}.encoder.layer.{l}.{m}" for l in layers for m in modules
    )


def test_prefix_tuning_wraps_no_module_and_says_where_it_acts() -> None:
    assert targeted_modules(build("prefix", [0, 1, 2])) == [
        "prefix: 5 virtual tokens prepended to the keys and values of layers 0-2"
    ]


def test_prefix_tuning_is_refused_for_mpnet() -> None:
    with pytest.raises(ValueError, match="past_key_values"):
        build("prefix", [0, 1, 2], "mpnet")


def test_full_trains_everything() -> None:
    model = build("full")
    assert sum(trainable_parameters(model).values()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("strategy", "expected_names"),
    [
        ("head", {"classifier.weight", "classifier.bias"}),
        (
            "shallow",
            {
                n
                for n in BertForSequenceClassification(tiny_config(L)).state_dict()
                if ".layer.1." in n or ".layer.2." in n or "pooler" in n or "classifier" in n
            },
        ),
    ],
)
def test_exact_trainable_names(strategy: str, expected_names: set[str]) -> None:
    assert set(trainable_parameters(build(strategy))) == expected_names


@pytest.mark.parametrize("layers", [[0], [2], [0, 2], [1], [0, 1, 2]])
def test_lora_band_maps_to_layer_indices(layers: list[int]) -> None:
    model = build("lora_selective", layers)
    adapted = {int(n.split(".layer.")[1].split(".")[0]) for n in targeted_modules(model)}
    assert adapted == set(layers)  # index 0 included: no falsy-index bug
    assert len(targeted_modules(model)) == 3 * len(layers)
    names = trainable_parameters(model)
    assert {n for n in names if "lora_" not in n} == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }


SELECTION = {
    "band": [1, 2],
    "top": [4, 5],
    "complement": [0, 3],
    "rgn": [3, 5],
    "cka": [0, 5],
    "random": [{"layers": [4, 5]}, {"layers": [0, 1]}],
}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("lora_selective", [1, 2]),
        ("lora_all", [0, 1, 2, 3, 4, 5]),
        ("lora_random_1", [0, 1]),
        ("lora_top", [4, 5]),
        ("lora_complement", [0, 3]),
        ("lora_rgn", [3, 5]),
        ("lora_cka", [0, 5]),
        ("ia3_all", [0, 1, 2, 3, 4, 5]),
        ("ia3_selective", [1, 2]),
        ("prefix", [0, 1, 2, 3, 4, 5]),
        ("lora_selective_tau", [1, 2]),
        ("lora_selective_tau_ctrl", [1, 2]),
        ("lora_selective_anneal", [1, 2]),
        ("full", []),
        ("none", []),
    ],
)
def test_adapted_layers_come_from_the_selection(strategy: str, expected: list[int]) -> None:
    assert adapted_layers(strategy, 6, SELECTION) == expected


def test_lora_on_minilm_shape_counts_9216_per_layer() -> None:
    """MiniLM-L6 (hidden 384), r = 4 on q, k, v: 9,216 per adapted layer; BERT-base's 5 layers: 92,160."""
    cfg = tiny_config(2)
    cfg.hidden_size, cfg.num_attention_heads = 384, 12
    model = apply_strategy(
        BertForSequenceClassification(cfg),
        "lora_selective",
        shallow_k=2,
        lora=Lora(rank=4, alpha=16, dropout=0.05, targets=["query", "key", "value"], lr=1e-3),
        layers=[1],
    )
    assert sum(trainable_parameters(model).values()) == 9_216 + (384 * 2 + 2)
    assert 5 * lora_per_layer(4, 768) == 92_160


@pytest.mark.parametrize(
    ("strategy", "layers"), [("lora_selective", []), ("lora_all", None), ("lora_random_0", [3]), ("unknown", None)]
)
def test_bad_strategy_arguments(strategy: str, layers: list[int] | None) -> None:
    with pytest.raises(ValueError):
        build(strategy, layers)


@pytest.mark.parametrize(
    ("strategy", "layers"),
    [("head", None), ("shallow", None), ("bitfit", None), ("lora_selective", [0]), ("full", None)],
)
def test_one_step_changes_only_trainable_parameters(strategy: str, layers: list[int] | None, tiny_batch: dict) -> None:
    model = build(strategy, layers)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = set(trainable_parameters(model))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**tiny_batch).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if n in trainable:
            assert changed or "lora_A" in n or p.grad is None or p.grad.abs().sum() == 0, n  # lora_B starts at 0
        else:
            assert not changed, n


def test_every_strategy_sees_the_same_batches_in_the_same_order() -> None:
    """The paired design: the batch stream of a group does not depend on the strategy."""
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 99, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (40,), generator=g)]
    labels = [i % 2 for i in range(40)]
    params = params_with(finetune={"steps": 7, "batch_size": 4, "diag_every": 3})
    data = GroupData(ids, labels, batch_stream([len(x) for x in ids], 4, 42, 7), None, [], 0)
    seen: dict[str, list[torch.Tensor]] = {}
    for strategy, layers in (("bitfit", None), ("full", None), ("lora_selective", [1])):
        model = build(strategy, layers)
        seen[strategy] = []
        model.register_forward_pre_hook(
            lambda m, a, kw, s=strategy: seen[s].append(kw["input_ids"].clone()) or None, with_kwargs=True
        )
        run = CellRun(Cell(Group("rt", "over", 42), strategy), model, layers or [], None, 1e-3, {0, 3, 6})
        train_runs([run], params, data, torch.device("cpu"), Precision("fp32", "cpu", "test"))
        assert len(run.records) == 3 and [c["step"] for c in run.curve] == [0, 3, 6]
    assert len(seen["full"]) == 7 + 3  # 7 training steps and 3 diagnostic measurements (steps 0, 3, 6)
    for other in ("bitfit", "lora_selective"):
        assert all(torch.equal(a, b) for a, b in zip(seen["full"], seen[other], strict=True))
