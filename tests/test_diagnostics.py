"""Tests for inflection_layers.diagnostics on hand-made tensors and the tiny random BERT."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import BertForSequenceClassification

from conftest import tiny_config
from inflection_layers.diagnostics import (
    ActivationGradRecorder,
    attention_entropy,
    attention_rank,
    encoder_parts,
    layer_attention_entropy,
    logit_margin,
    measure,
    param_grad_norms,
)


def rows_to_attn(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query row of a (1, 1, K, K) attention set to `row`; all keys valid."""
    row = torch.tensor(rows[0])
    k = row.numel()
    return row.expand(1, 1, k, k).clone(), torch.ones(1, k, dtype=torch.long)


@pytest.mark.parametrize(
    ("row", "raw", "norm"),
    [
        ([0.25, 0.25, 0.25, 0.25], math.log(4), 1.0),
        ([1 / 3, 1 / 3, 1 / 3], math.log(3), 1.0),
        ([1.0, 0.0, 0.0], 0.0, 0.0),
        ([0.0, 0.0, 1.0, 0.0, 0.0], 0.0, 0.0),
        ([0.5, 0.5, 0.0, 0.0], math.log(2), 0.5),
    ],
)
def test_entropy_single_rows(row: list[float], raw: float, norm: float) -> None:
    attn, mask = rows_to_attn([row])
    r, n = attention_entropy(attn, mask)
    assert r.shape == n.shape == (1,)
    assert r.item() == pytest.approx(raw, abs=1e-6)  # inputs are float32
    assert n.item() == pytest.approx(norm, abs=1e-6)


def test_entropy_two_heads_by_hand() -> None:
    # K = 2; head 0 rows: [0.5, 0.5], [0.9, 0.1]; head 1 rows: [1, 0], [0.2, 0.8].
    attn = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]], [[1.0, 0.0], [0.2, 0.8]]]])
    mask = torch.ones(1, 2, dtype=torch.long)
    h = lambda *ps: -sum(p * math.log(p) for p in ps if p > 0)  # noqa: E731
    want = torch.tensor([(h(0.5, 0.5) + h(0.9, 0.1)) / 2, (h(1.0) + h(0.2, 0.8)) / 2], dtype=torch.float64)
    raw, norm = attention_entropy(attn, mask)
    torch.testing.assert_close(raw, want)
    torch.testing.assert_close(norm, want / math.log(2))


def test_entropy_input_dtype_is_upcast() -> None:
    attn = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    mask = torch.ones(2, 5, dtype=torch.long)
    raw64, _ = attention_entropy(attn.double(), mask)
    raw16, _ = attention_entropy(attn.bfloat16(), mask)
    assert raw16.dtype == torch.float64
    torch.testing.assert_close(raw16, raw64, atol=2e-2, rtol=0)


def test_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    B, H, T, n = 1, 3, 6, 4  # padded to T, n real tokens
    real = torch.softmax(torch.randn(B, H, n, n), -1)
    raw_ref, norm_ref = attention_entropy(real, torch.ones(B, n, dtype=torch.long))
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[:, :n] = 1
    padded = torch.zeros(B, H, T, T)
    padded[:, :, :n, :n] = real
    raw, norm = attention_entropy(padded, mask)
    torch.testing.assert_close(raw, raw_ref)
    torch.testing.assert_close(norm, norm_ref)
    # Garbage on padded query rows (even NaN / negative) and tiny mass on padded keys of real rows.
    garbage = padded.clone()
    garbage[:, :, n:, :] = torch.rand(B, H, T - n, T) * 5 - 1
    garbage[:, :, n, 0] = math.nan
    garbage[:, :, :n, n:] = 1e-30
    raw_g, norm_g = attention_entropy(garbage, mask)
    torch.testing.assert_close(raw_g, raw_ref)
    torch.testing.assert_close(norm_g, norm_ref)


def test_batch_mixes_examples_over_valid_rows() -> None:
    # Example 0: 4 valid uniform rows (log 4); example 1: 1 valid key (entropy 0, normalised 0), 3 padded rows.
    attn = torch.zeros(2, 1, 4, 4)
    attn[0] = 0.25
    attn[1, :, :, 0] = 1.0
    attn[1, :, 1:, :] = 0.7  # garbage on padded query rows
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    raw, norm = attention_entropy(attn, mask)
    assert raw.item() == pytest.approx(4 * math.log(4) / 5)
    assert norm.item() == pytest.approx(4 / 5)


def test_layer_entropy_on_tiny_bert(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        out = tiny_bert(**tiny_batch, output_attentions=True)
    L, H, K = 3, 4, tiny_batch["input_ids"].shape[1]
    raw, norm = layer_attention_entropy(out.attentions, tiny_batch["attention_mask"])
    assert raw.shape == norm.shape == (L, H)
    assert torch.isfinite(raw).all() and torch.isfinite(norm).all()
    assert (raw >= 0).all() and (raw <= math.log(K) + 1e-9).all()
    assert (norm >= 0).all() and (norm <= 1 + 1e-9).all()
    torch.testing.assert_close(raw[1], attention_entropy(out.attentions[1], tiny_batch["attention_mask"])[0])


@pytest.mark.parametrize(
    ("logits", "labels", "want"),
    [
        ([[2.0, 1.0], [0.0, 3.0]], [0, 1], (1.0 + 3.0) / 2),
        ([[2.0, 1.0], [0.0, 3.0]], [1, 0], (-1.0 - 3.0) / 2),
        ([[1.0, 5.0, 2.0]], [2], -3.0),
        ([[4.0, 4.0, -1.0]], [0], 0.0),
    ],
)
def test_logit_margin(logits: list[list[float]], labels: list[int], want: float) -> None:
    assert logit_margin(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(want)


def loss_grads(model: nn.Module, batch: dict[str, torch.Tensor], record: bool) -> dict[str, torch.Tensor]:
    """Parameter grads after one backward of the batch loss, optionally under the recorder."""
    model.zero_grad(set_to_none=True)
    if record:
        with ActivationGradRecorder(model):
            model(**batch).loss.backward()
    else:
        model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def per_token_reference(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.autograd.grad of the loss at every hidden state, reduced by hand: (mean over valid tokens, mean at token
    0)."""
    out = model(**batch, output_hidden_states=True)
    grads = torch.autograd.grad(out.loss, out.hidden_states)  # L + 1 of (B, T, D)
    valid = batch["attention_mask"].bool()
    per_token = [g.norm(dim=-1) for g in grads]  # (B, T)
    return torch.stack([n[valid].double().mean() for n in per_token]).float(), torch.stack(
        [n[:, 0].double().mean() for n in per_token]
    ).float()


def example_norm_reference(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The paper's ||dL/dh_l|| by autograd: per example the L2 norm over its valid tokens, then the mean over
    examples."""
    out = model(**batch, output_hidden_states=True)
    grads = torch.autograd.grad(out.loss, out.hidden_states)  # L + 1 of (B, T, D)
    valid = batch["attention_mask"].bool()[:, :, None]
    return torch.stack([torch.where(valid, g, 0.0).double().pow(2).sum((1, 2)).sqrt().mean() for g in grads]).float()


def test_recorder_matches_autograd(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    want_tok, want_cls = per_token_reference(tiny_bert, tiny_batch)
    want = example_norm_reference(tiny_bert, tiny_batch)
    with ActivationGradRecorder(tiny_bert) as rec:
        tiny_bert(**tiny_batch).loss.backward()
    mask = tiny_batch["attention_mask"]
    assert rec.norms(mask).shape == (4,)
    torch.testing.assert_close(rec.norms(mask).float(), want, rtol=1e-5, atol=0)
    torch.testing.assert_close(rec.token_mean(mask).float(), want_tok, rtol=1e-5, atol=0)
    torch.testing.assert_close(rec.cls_norms().float(), want_cls, rtol=1e-5, atol=0)


def test_the_last_layer_is_not_diluted_by_the_sentence_length(
    tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]
) -> None:
    """Only the first token of the last layer gets a gradient (the head reads it alone): the primary measure is then
    that token's norm, while the token mean divides it by every valid token."""
    with ActivationGradRecorder(tiny_bert) as rec:
        tiny_bert(**tiny_batch).loss.backward()
    mask = tiny_batch["attention_mask"]
    n_valid, B = int(mask.sum()), mask.shape[0]
    torch.testing.assert_close(rec.norms(mask)[-1], rec.cls_norms()[-1], rtol=1e-6, atol=0)
    torch.testing.assert_close(rec.token_mean(mask)[-1], rec.cls_norms()[-1] * B / n_valid, rtol=1e-5, atol=0)


def test_the_primary_measure_keeps_its_top_layer_ratio_from_8_to_64_tokens() -> None:
    """Sequence length 8 -> 64 on a tiny random BERT: the primary measure's top/below ratio and its top value stay the
    same, while the token mean at the top layer falls as 1/T (8x)."""
    torch.manual_seed(0)
    config = tiny_config(3)
    config.max_position_embeddings = 128
    model = BertForSequenceClassification(config).eval()
    primary, token = {}, {}
    for T in (8, 64):
        g = torch.Generator().manual_seed(1)
        batch = {
            "input_ids": torch.randint(5, 99, (8, T), generator=g),
            "attention_mask": torch.ones(8, T, dtype=torch.long),
            "labels": torch.tensor([0, 1] * 4),
        }
        with ActivationGradRecorder(model) as rec:
            model(**batch).loss.backward()
        primary[T], token[T] = rec.norms(batch["attention_mask"]), rec.token_mean(batch["attention_mask"])
        model.zero_grad()
    ratio = {T: float(v[-1] / v[-2]) for T, v in primary.items()}
    assert ratio[64] == pytest.approx(ratio[8], rel=0.02)
    assert float(primary[64][-1]) == pytest.approx(float(primary[8][-1]), rel=0.02)
    assert float(token[64][-1] / token[8][-1]) == pytest.approx(8 / 64, rel=0.05)


def uniform(T: int) -> torch.Tensor:
    return torch.full((T, T), 1.0 / T)


def one_column(T: int, j: int) -> torch.Tensor:
    a = torch.zeros(T, T)
    a[:, j] = 1.0
    return a


@pytest.mark.parametrize(
    ("block", "rank", "mass", "first"),
    [
        (uniform(5), 1, 1 / 5, True),  # uniform: rank 1, mass 1/T (argmax ties: the first column)
        (torch.eye(6), 6, 1 / 6, True),  # identity: full rank
        (one_column(4, 0), 1, 1.0, True),  # every row on the first token: the attention sink
        (one_column(4, 2), 1, 1.0, False),
        (
            torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
            2,
            1 / 3,
            True,
        ),  # 90% energy needs 2 of 2 non-zero
    ],
)
def test_attention_rank_on_hand_built_matrices(block: torch.Tensor, rank: int, mass: float, first: bool) -> None:
    T = block.shape[0]
    r = attention_rank(block.expand(1, 2, T, T), torch.ones(1, T, dtype=torch.long))
    assert r["rank"].tolist() == [[rank, rank]] and r["length"].tolist() == [T]
    torch.testing.assert_close(r["column_mass"], torch.full((1, 2), mass, dtype=torch.float64))
    assert r["first_column"].tolist() == [[first, first]]


def test_padding_changes_no_rank_measure() -> None:
    torch.manual_seed(0)
    n, T = 4, 7
    real = torch.softmax(torch.randn(1, 3, n, n), -1)
    ref = attention_rank(real, torch.ones(1, n, dtype=torch.long))
    padded = torch.rand(2, 3, T, T)  # garbage everywhere, then the real block of example 1 at its valid positions
    mask = torch.zeros(2, T, dtype=torch.long)
    mask[0] = 1
    mask[1, :n] = 1
    padded[1, :, :n, :n] = real[0]
    got = attention_rank(padded, mask)
    assert got["rank"][1].tolist() == ref["rank"][0].tolist() and got["length"].tolist() == [T, n]
    torch.testing.assert_close(got["column_mass"][1], ref["column_mass"][0])
    assert got["first_column"][1].tolist() == ref["first_column"][0].tolist()


def test_recorder_keeps_param_grads(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    plain = loss_grads(tiny_bert, tiny_batch, record=False)
    recorded = loss_grads(tiny_bert, tiny_batch, record=True)
    assert plain.keys() == recorded.keys() and len(plain) == len(list(tiny_bert.parameters()))
    for name in plain:
        assert torch.equal(plain[name], recorded[name]), name


def test_recorder_with_frozen_encoder(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    for name, p in tiny_bert.named_parameters():
        p.requires_grad_(name.startswith("classifier"))
    with torch.no_grad():
        logits_ref = tiny_bert(**tiny_batch).logits
    with ActivationGradRecorder(tiny_bert) as rec:
        out = tiny_bert(**tiny_batch)
        out.loss.backward()
    torch.testing.assert_close(out.logits, logits_ref, rtol=0, atol=0)
    norms = rec.norms(tiny_batch["attention_mask"])
    assert norms.shape == (4,) and torch.isfinite(norms).all() and (norms > 0).all()
    assert set(param_grad_norms(tiny_bert)) == {"classifier"}


def test_recorder_lifecycle(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    second = {**tiny_batch, "labels": 1 - tiny_batch["labels"]}
    want = example_norm_reference(tiny_bert, second)  # also installs HF's own (permanent) capture hooks
    emb, layers = encoder_parts(tiny_bert)
    n_hooks = lambda: len(emb._forward_hooks) + sum(len(m._forward_hooks) for m in layers)  # noqa: E731
    before = n_hooks()
    with ActivationGradRecorder(tiny_bert) as rec:
        with torch.no_grad():
            tiny_bert(**tiny_batch)  # no grad: records nothing, no error
        with pytest.raises(RuntimeError):
            rec.cls_norms()
        tiny_bert(**tiny_batch).loss.backward()
        first = rec.norms(tiny_batch["attention_mask"])
        tiny_bert(**second).loss.backward()
        last = rec.norms(second["attention_mask"])
        assert n_hooks() == before + 4
    assert not torch.equal(first, last)
    torch.testing.assert_close(last.float(), want, rtol=1e-5, atol=0)
    assert n_hooks() == before  # hooks removed on exit


def test_param_grad_norms_plain(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    tiny_bert(**tiny_batch).loss.backward()
    got = param_grad_norms(tiny_bert)
    assert set(got) == {"embeddings", "layer.0", "layer.1", "layer.2", "pooler", "classifier"}
    cases = [("embeddings", "bert.embeddings."), ("layer.1", "bert.encoder.layer.1."), ("classifier", "classifier.")]
    for key, prefix in cases:
        grads = [p.grad.flatten() for n, p in tiny_bert.named_parameters() if n.startswith(prefix)]
        assert got[key] == pytest.approx(torch.cat(grads).norm().item(), rel=1e-6)


def lora(model: nn.Module) -> nn.Module:
    cfg = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["query", "key", "value"],
        layers_to_transform=[0, 2],
        modules_to_save=["classifier"],
    )
    return get_peft_model(model, cfg)


def test_param_grad_norms_peft(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    model = lora(tiny_bert)
    model(**tiny_batch).loss.backward()
    got = param_grad_norms(model)
    assert {"layer.0", "layer.2", "classifier"} <= set(got)
    assert "layer.1" not in got and "embeddings" not in got
    lora0 = [p.grad.flatten() for n, p in model.named_parameters() if ".layer.0." in n and p.grad is not None]
    assert all(".lora_" in n for n, p in model.named_parameters() if ".layer.0." in n and p.requires_grad)
    assert got["layer.0"] == pytest.approx(torch.cat(lora0).norm().item(), rel=1e-6)


def test_encoder_parts(tiny_bert: nn.Module, tiny_batch: dict[str, torch.Tensor]) -> None:
    emb, layers = encoder_parts(tiny_bert)
    assert emb is tiny_bert.bert.embeddings and layers is tiny_bert.bert.encoder.layer and len(layers) == 3
    wrapped = lora(tiny_bert)
    emb_w, layers_w = encoder_parts(wrapped)
    assert emb_w is emb and layers_w is layers
    with ActivationGradRecorder(wrapped) as rec:  # LoRA: frozen embeddings, gradient still reaches all positions
        wrapped(**tiny_batch).loss.backward()
    norms = rec.norms(tiny_batch["attention_mask"])
    assert torch.isfinite(norms).all() and (norms > 0).all()
    with pytest.raises(ValueError, match="Linear"):
        encoder_parts(nn.Linear(2, 2))


def test_measured_entropy_does_not_depend_on_dropout(tiny_batch: dict[str, torch.Tensor]) -> None:
    """measure() runs in eval mode: a model with dropout 0.9, in train mode, gives the entropy of dropout 0."""
    from transformers import BertForSequenceClassification

    from conftest import tiny_config

    results = []
    for p in (0.0, 0.9):
        config = tiny_config()
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = p
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).train()
        results.append(measure(model, tiny_batch))
        assert model.training  # the mode is restored for the training step that follows
    torch.testing.assert_close(results[0]["entropy"], results[1]["entropy"], rtol=0, atol=0)
    torch.testing.assert_close(results[0]["act_grad"], results[1]["act_grad"], rtol=0, atol=0)


def test_measure_switches_sdpa_to_eager_and_back(tiny_batch: dict[str, torch.Tensor]) -> None:
    from transformers import BertForSequenceClassification

    from conftest import tiny_config

    config = tiny_config()
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    rec = measure(model, tiny_batch)
    assert rec["entropy"].shape == (3, 4) and torch.isfinite(rec["entropy"]).all()
    assert model.config._attn_implementation == "sdpa"
