"""Pure diagnostics per layer: attention entropy and rank collapse, logit margin, gradient norms.

Nothing here loads data or models, writes files or keeps global state. The activation-gradient measures
are defined in :class:`ActivationGradRecorder`; the lazy-layer measures (Sanyal et al., arXiv 2404.08634)
in :func:`attention_rank`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from inflection_layers.cells import EMBEDDINGS_LAYER
from inflection_layers.modeling import attention

logger = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def attention_entropy(attn: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean Shannon entropy (nats) of self-attention rows, per head.

    attn (B, H, Q, K) probabilities of one layer; attention_mask (B, K), 1 = real token, Q == K.
    Each valid query row's entropy is summed over valid keys only (0 log 0 = 0); padded query rows
    are ignored. Normalised entropy divides a row by log(n_valid_keys) of its example (0 when n = 1).
    Returns (raw, normalised), each (H,) float64: means over all valid (batch, query) rows.
    """
    B, _H, Q, K = attn.shape
    if attention_mask.shape != (B, K) or Q != K:
        shapes = f"{tuple(attn.shape)}, {tuple(attention_mask.shape)}"
        raise ValueError(f"expected attn (B, H, K, K) and mask (B, K), got {shapes}")
    p = attn.detach().to(torch.float64)
    valid = attention_mask.detach().to(device=p.device).bool()  # (B, K)
    plogp = torch.where(valid[:, None, None, :], torch.xlogy(p, p), 0.0)  # (B, H, Q, K)
    ent = -plogp.sum(-1)  # (B, H, Q)
    n = valid.sum(-1).to(torch.float64)  # (B,)
    log_n = torch.where(n > 1, n.clamp(min=1).log(), math.inf)  # row / inf = 0 for single-key examples
    ent_norm = ent / log_n[:, None, None]
    rows = valid[:, None, :].to(torch.float64)  # (B, 1, Q): query row valid
    n_rows = rows.sum().clamp(min=1)
    raw = torch.where(rows.bool(), ent, 0.0).sum((0, 2)) / n_rows
    norm = torch.where(rows.bool(), ent_norm, 0.0).sum((0, 2)) / n_rows
    return raw, norm


def layer_attention_entropy(attentions: Sequence[Tensor], attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """`attention_entropy` for each layer's (B, H, K, K) attention; returns (raw, normalised), each (L, H)."""
    per_layer = [attention_entropy(a, attention_mask) for a in attentions]
    return torch.stack([r for r, _ in per_layer]), torch.stack([n for _, n in per_layer])


def attention_rank(attn: Tensor, attention_mask: Tensor, energy: float = 0.9) -> dict[str, Tensor]:
    """Rank collapse of one layer's post-softmax attention attn (B, H, K, K), attention_mask (B, K), per example.

    For each example and head, on its valid T x T block (never over padding, never averaged across sentences):
    the smallest k whose cumulative squared singular values reach `energy` of their total (torch.linalg.svdvals),
    the share of attention mass in the single heaviest column (column sum / T), and whether that column is the
    first token (the "attention sink"). Returns rank (B, H) int64, length (B,) int64, column_mass (B, H) and
    first_column (B, H) bool. A uniform block has rank 1 and column mass 1/T; the identity full rank and 1/T;
    one column of ones rank 1 and column mass 1.
    """
    B, H, Q, K = attn.shape
    if attention_mask.shape != (B, K) or Q != K:
        raise ValueError(
            f"expected attn (B, H, K, K) and mask (B, K), got {tuple(attn.shape)}, {tuple(attention_mask.shape)}"
        )
    lengths = attention_mask.detach().to(attn.device).long().sum(-1)  # (B,)
    rank = torch.zeros(B, H, dtype=torch.long)
    mass = torch.zeros(B, H, dtype=torch.float64)
    first = torch.zeros(B, H, dtype=torch.bool)
    valid = attention_mask.detach().to(attn.device).bool()
    for T in lengths.unique().tolist():
        if T == 0:
            continue
        idx = (lengths == T).nonzero().flatten()
        rows = torch.stack([torch.nonzero(valid[i]).flatten() for i in idx.tolist()])  # (n, T) valid positions
        block = attn.detach().double()[
            idx[:, None, None, None],
            torch.arange(H)[None, :, None, None],
            rows[:, None, :, None],
            rows[:, None, None, :],
        ]  # (n, H, T, T)
        sq = torch.linalg.svdvals(block).pow(2)  # (n, H, T), descending
        share = sq.cumsum(-1) / sq.sum(-1, keepdim=True).clamp(min=1e-300)
        rank[idx.cpu()] = ((share < energy - 1e-12).sum(-1) + 1).clamp(max=T).cpu()
        columns = block.sum(-2) / T  # (n, H, T): mean attention each key receives
        top = columns.argmax(-1)
        mass[idx.cpu()] = columns.amax(-1).cpu()
        first[idx.cpu()] = (top == 0).cpu()
    return {"rank": rank, "length": lengths.cpu(), "column_mass": mass, "first_column": first}


def lazy_layer_means(attentions: Sequence[Tensor], attention_mask: Tensor) -> dict[str, Tensor]:
    """:func:`attention_rank` of every layer, averaged over examples: rank / T, column mass and the share of examples
    whose heaviest column is the first token; each (L, H) float64."""
    out: dict[str, list[Tensor]] = {"rank": [], "column_mass": [], "first_column": []}
    for a in attentions:
        r = attention_rank(a, attention_mask)
        out["rank"].append((r["rank"].double() / r["length"].clamp(min=1)[:, None].double()).mean(0))
        out["column_mass"].append(r["column_mass"].mean(0))
        out["first_column"].append(r["first_column"].double().mean(0))
    return {k: torch.stack(v) for k, v in out.items()}


def logit_margin(logits: Tensor, labels: Tensor) -> float:
    """Mean over the batch of (true-class logit - largest other logit); logits (B, C), labels (B,)."""
    logits = logits.detach().to(torch.float64)
    true = logits.gather(1, labels.view(-1, 1).to(logits.device)).squeeze(1)  # (B,)
    is_true = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.view(-1, 1).to(logits.device), True)
    other = logits.masked_fill(is_true, -math.inf).amax(1)  # (B,)
    return (true - other).mean().item()


def _group(name: str) -> str:
    """Group key of a parameter name: 'layer.{i}', 'embeddings', 'pooler', 'classifier' or 'other'."""
    m = _LAYER_RE.search(name)
    if m:
        return f"layer.{m.group(1)}"
    return next((g for g in ("embeddings", "pooler", "classifier") if g in name), "other")


def param_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of `.grad` of the trainable parameters, per group (see `_group`); groups without grads omitted."""
    sq: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            g = _group(name)
            sq[g] = sq.get(g, 0.0) + p.grad.detach().to(torch.float64).pow(2).sum()
    return {g: math.sqrt(float(s)) for g, s in sq.items()}


def encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(embeddings module, encoder layers) of a HF BERT-like model, peft-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PeftModel
    base = getattr(inner, "base_model", inner)  # HF: BertForX.base_model -> BertModel
    emb, layers = getattr(base, "embeddings", None), getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(emb, nn.Module) or not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find .embeddings and .encoder.layer in {type(model).__name__}")
    return emb, layers


def _hidden(output: Any) -> Tensor | None:
    """Hidden states (B, T, D) from a module output: a tensor or a tuple whose first element is one."""
    h = output[0] if isinstance(output, (tuple, list)) else output
    return h if isinstance(h, Tensor) else None


class ActivationGradRecorder:
    """Records dS/dh_l per token at the embeddings' output (l = 0) and each encoder layer's output (l = i + 1).

    S is whatever scalar is backpropagated (normally the batch-mean loss). Three reductions of the same
    per-(example, token) gradients g_bt (D,), each the same at every layer:

    - :meth:`norms`, the primary measure, the paper's ||dL/dh_l|| per example: sqrt(sum over the example's
      valid tokens of ||g_bt||^2), then its mean over examples. It has no 1/T dilution: at the last layer
      only the first token receives a gradient (the head reads it alone), and this norm is then exactly
      that token's, however long the sentence;
    - :meth:`token_mean`, the mean over every valid token of ||g_bt|| (a sensitivity measure: at the last
      layer it divides one token's norm by the sentence length);
    - :meth:`cls_norms`, the mean over examples of ||g_b0|| at the first token.

    Works with frozen parameters: if the embeddings' output does not require grad it is replaced by a
    detached copy that does (same values), so every layer gets a gradient.
    Usage: ``with ActivationGradRecorder(model) as rec: model(**batch).loss.backward()``; ``rec.norms(mask)``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.embeddings, self.layers = encoder_parts(model)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._norms: dict[int, Tensor] = {}  # layer index -> (B, T) per-token gradient norms

    def __enter__(self) -> ActivationGradRecorder:
        self._handles.append(self.embeddings.register_forward_hook(self._hook(0)))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._hook(i + 1)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, idx: int) -> Callable[[nn.Module, Any, Any], Any]:
        def store(grad: Tensor) -> None:
            self._norms[idx] = torch.linalg.vector_norm(grad.detach().float(), dim=-1).cpu()  # (B, T)

        def forward_hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not torch.is_grad_enabled():
                return None
            h = _hidden(output)
            if h is None:
                return None
            replaced = idx == 0 and not h.requires_grad and h.is_floating_point()
            if replaced:  # frozen embeddings: make the graph start here
                h = h.detach().requires_grad_(True)
            if h.requires_grad:
                h.register_hook(store)
            if not replaced:
                return None
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return forward_hook

    def _per_layer(self, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        if not self._norms:
            raise RuntimeError("no gradient recorded: run a forward and backward inside the context")
        out = torch.full((len(self.layers) + 1,), math.nan)
        for i, v in self._norms.items():
            out[i] = reduce(v)
        return out

    def norms(self, attention_mask: Tensor) -> Tensor:
        """(L + 1,) [embeddings output, layer 0, ..., layer L-1]: per example the L2 norm over its valid tokens, then
        the mean over examples (the primary measure)."""
        valid = attention_mask.detach().cpu().bool()  # (B, T)
        return self._per_layer(lambda v: torch.where(valid, v.double(), 0.0).pow(2).sum(1).sqrt().mean())

    def token_mean(self, attention_mask: Tensor) -> Tensor:
        """(L + 1,) mean over every valid token of the per-token gradient norm (diluted by 1/T at the last layer)."""
        valid = attention_mask.detach().cpu().bool()  # (B, T)
        return self._per_layer(lambda v: v[valid].double().mean())

    def cls_norms(self) -> Tensor:
        """(L + 1,) mean over examples of the gradient norm at the first token."""
        return self._per_layer(lambda v: v[:, 0].double().mean())


def param_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the parameters per group (see `_group`): the denominator of relative gradient norms (Auto-RGN)."""
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        g = _group(name)
        sq[g] = sq.get(g, 0.0) + float(p.detach().to(torch.float64).pow(2).sum())
    return {g: math.sqrt(s) for g, s in sq.items()}


def valid_tokens(hidden_states: Sequence[Tensor], attention_mask: Tensor) -> list[Tensor]:
    """Per hidden state (L + 1 entries of (B, T, D)), its valid tokens' vectors (n_valid, D), float32 on the CPU."""
    valid = attention_mask.bool()
    return [h.detach()[valid].float().cpu() for h in hidden_states]


def measure(model: nn.Module, batch: dict[str, Tensor], hidden: bool = False) -> dict[str, Any]:
    """One forward + backward with every diagnostic recorded, in eval mode (no dropout) with eager
    attention, whatever mode the model is in; gradients are left in place (no update): zero them after.

    batch: input_ids, attention_mask (B, T), labels (B,). Returns per head (L, H): entropy, entropy_norm,
    attn_rank, column_mass, first_column (:func:`lazy_layer_means`); per layer (L + 1,) [embeddings output
    first]: act_grad, act_grad_token_mean, act_grad_cls (:class:`ActivationGradRecorder`); param_grad
    {group: norm}; loss and margin (floats); and with `hidden` the valid tokens of every hidden state.
    """
    was_training = model.training
    model.eval()
    try:
        with attention(model, "eager"), ActivationGradRecorder(model) as rec:
            out = model(**batch, output_attentions=True, output_hidden_states=hidden)
            out.loss.backward()
    finally:
        model.train(was_training)
    raw, norm = layer_attention_entropy(out.attentions, batch["attention_mask"])
    lazy = lazy_layer_means(out.attentions, batch["attention_mask"])
    result = {
        "entropy": raw,
        "entropy_norm": norm,
        "attn_rank": lazy["rank"],
        "column_mass": lazy["column_mass"],
        "first_column": lazy["first_column"],
        "act_grad": rec.norms(batch["attention_mask"]),
        "act_grad_token_mean": rec.token_mean(batch["attention_mask"]),
        "act_grad_cls": rec.cls_norms(),
        "param_grad": param_grad_norms(model),
        "loss": out.loss.item(),
        "margin": logit_margin(out.logits, batch["labels"]),
    }
    if hidden:
        result["hidden"] = valid_tokens(out.hidden_states, batch["attention_mask"])
    return result


HEAD_METRICS = ("entropy", "entropy_norm", "attn_rank", "column_mass", "first_column")  # (L, H) in a record
GRAD_METRICS = ("act_grad", "act_grad_token_mean", "act_grad_cls")  # (L + 1,) in a record, embeddings first


def per_head_means(records: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """Average the per-head metrics of `measure` records over batches -> {metric: (L, H)}."""
    return {m: torch.stack([r[m].double() for r in records]).mean(0) for m in HEAD_METRICS}


def per_layer_means(records: Sequence[dict[str, Any]], num_layers: int) -> dict[str, list[float]]:
    """Average `measure` records over batches -> {metric: values per layer}.

    Per-head metrics as the mean over heads (entropy, entropy_norm, attn_rank, column_mass, first_column) and,
    for rank and column mass, the maximum over heads (attn_rank_max, column_mass_max), each (L,); gradient
    metrics (L + 1,) with the embeddings' output first; param_grad (L,), NaN for layers without trainable parameters.
    """
    heads = per_head_means(records)
    out = {m: heads[m].mean(1).tolist() for m in HEAD_METRICS}
    out |= {f"{m}_max": heads[m].amax(1).tolist() for m in ("attn_rank", "column_mass")}
    out |= {m: torch.stack([r[m].double() for r in records]).mean(0).tolist() for m in GRAD_METRICS}
    pg = [[r["param_grad"].get(f"layer.{i}", math.nan) for i in range(num_layers)] for r in records]
    out["param_grad"] = torch.tensor(pg, dtype=torch.float64).mean(0).tolist()
    return out


def tidy(means: dict[str, list[float]], **labels: Any) -> list[dict[str, Any]]:
    """Rows (layer, metric, value, **labels) from `per_layer_means`; the embeddings' output is layer -1."""
    rows = []
    for metric, values in means.items():
        first = EMBEDDINGS_LAYER if metric.startswith("act_grad") else 0
        rows += [{"layer": first + i, "metric": metric, "value": v, **labels} for i, v in enumerate(values)]
    return rows
