"""How long a stage will take on this machine, and the study's floor: FLOPs of every pass over rates measured here.

Every stage's work is a few kinds of passes over tokens through the encoder (:class:`Work`):

- ``train``: forward, backward of activations down to the lowest trained layer, and the weight gradients of
  what trains (a full or source step: every matrix; a peft cell: its low-rank updates only, which cost nothing
  beside the matrices they sit on);
- ``forward``: evaluation, representations and the trunk (forward only);
- ``measure``: a diagnostic pass (forward and backward with every weight's gradient, eager attention);
- ``extra``: FLOPs outside the encoder (sparse autoencoders, probes, CKA).

The FLOPs of a pass follow from the model's config (:func:`layer_flops`: the matrix products of one token
through one layer, 2 per multiply-add). A stage's estimate is its FLOPs of each kind over the rate this machine
reached on that kind in a timed probe (tools/estimate.py measures and keeps them, per machine, model and
precision), plus the start-up of a stage. The *floor* is the same FLOPs over the machine's large-shape matrix
product throughput: no engine can beat it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

from inflection_layers.cells import STUDY_LISTS, Group, expand, family, groups, sources
from inflection_layers.precision import machine_key, recall

logger = logging.getLogger(__name__)

KINDS = ("train", "forward", "measure", "extra")
CACHE = "estimate.json"


@dataclasses.dataclass
class Work:
    """The work of a stage: FLOPs of each kind of pass, and how many processes it starts."""

    train: float = 0.0
    forward: float = 0.0
    measure: float = 0.0
    extra: float = 0.0
    starts: int = 1

    def __add__(self, other: Work) -> Work:
        return Work(*(getattr(self, k) + getattr(other, k) for k in KINDS), self.starts + other.starts)

    def flops(self) -> float:
        return sum(getattr(self, k) for k in KINDS)


def layer_flops(config: Mapping[str, Any], mean_tokens: float) -> float:
    """FLOPs of one token's forward through one encoder layer: q, k, v, o and the feed-forward products, plus the
    attention scores and their use over a sentence of `mean_tokens` tokens (2 FLOPs per multiply-add)."""
    d, ff = config["hidden_size"], config.get("intermediate_size", 4 * config["hidden_size"])
    return 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * mean_tokens * d


def pass_flops(
    config: Mapping[str, Any], tokens: float, mean_tokens: float, kind: str, first: int = 0, weights: float = 1.0
) -> float:
    """FLOPs of `tokens` tokens through the encoder: forward (1x), plus for `train` the activation backward from the
    top down to layer `first` (1x) and the weight gradients of a share `weights` of the layers (1x each)."""
    L, per = config["num_hidden_layers"], layer_flops(config, mean_tokens)
    forward = tokens * L * per
    if kind == "forward":
        return forward
    if kind == "measure":
        return 3 * forward
    return forward + tokens * (L - first) * per + weights * forward


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Mean tokens per sentence of each prepared table (sst2_source, rt_train, rt_validation, ...), and their counts."""

    mean: dict[str, float]
    count: dict[str, int]

    def of(self, table: str) -> tuple[float, int]:
        return self.mean[table], self.count[table]

    @classmethod
    def of_ids(cls, tables: Mapping[str, list]) -> Tokens:
        """From token ids per table (the lists a stage has already tokenised)."""
        return cls(
            {n: sum(map(len, ids)) / max(len(ids), 1) for n, ids in tables.items()},
            {n: len(ids) for n, ids in tables.items()},
        )


def batch_tokens(batches: list[dict], stage: str) -> Tokens:
    """Token counts of a stage's measurement batches, as the target train table's (the only table they read)."""
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    table = f"{Group.parse(stage.partition('@')[2]).target}_train"
    return Tokens({table: sum(lengths) / max(len(lengths), 1)}, {table: len(lengths)})


def source_work(params: Any, config: Mapping[str, Any], tok: Tokens, regime: str) -> Work:
    """A source model: every epoch of the SST-2 sample, trained fully; SST-2 dev after every `dev_every` epochs."""
    p, (m, n), (dm, dn) = params.source, tok.of("sst2_source"), tok.of("sst2_dev")
    epochs = p.epochs(regime)
    evals = len([e for e in range(1, epochs + 1) if e % p.dev_every == 0 or e == epochs])
    return Work(
        train=epochs * pass_flops(config, n * m, m, "train"), forward=evals * pass_flops(config, dn * dm, dm, "forward")
    )


def _eval_tokens(params: Any, tok: Tokens, target: str) -> tuple[float, float]:
    parts = [tok.of(f"{target}_{s}") for s in params.finetune.eval_splits]
    n = sum(c for _, c in parts)
    return sum(m * c for m, c in parts) / max(n, 1), n


def finetune_work(
    params: Any, config: Mapping[str, Any], tok: Tokens, group: Group, kind: str, selection: dict | None = None
) -> Work:
    """One finetune stage of a group: each cell's steps, its diagnostics and evaluation. peft and tau cells share a
    trunk: the layers below each cell's first layer run once per step, up to the highest first layer."""
    p, L = params.finetune, config["num_hidden_layers"]
    m, _ = tok.of(f"{group.target}_train")
    em, en = _eval_tokens(params, tok, group.target)
    tokens, w = p.steps * p.batch_size * m, Work()
    names = expand(getattr(params.study, STUDY_LISTS[kind]), len(selection["random"]) if selection else _draws(params))
    firsts = []
    for s in names:
        first, weights = _first_and_weights(s, L, p.shallow_k, selection)
        if kind != "plain":  # lockstep: the cell's own forward starts at its first layer
            firsts.append(first)
            w.train += pass_flops(config, tokens, m, "train", first, weights) - tokens * first * layer_flops(config, m)
        elif s not in ("none", "head"):
            w.train += pass_flops(config, tokens, m, "train", first, weights)
        w.forward += pass_flops(config, en * em, em, "forward") + (
            pass_flops(config, tokens, m, "forward") if s == "head" else 0.0
        )
        if family(s) in params.analysis.strategies:
            diag = len(range(0, p.steps, p.diag_every)) + 1
            w.measure += diag * pass_flops(config, p.batch_size * m, m, "measure")
    w.forward += tokens * max(firsts, default=0) * layer_flops(config, m)  # the trunk, once per step
    return w


def _draws(params: Any) -> int:
    """Random bands per group before the selection exists ('all': C(6, 3) - 1, MiniLM's count for a 3-layer band)."""
    return params.ski.random_draws if params.ski.random_draws != "all" else math.comb(6, 3) - 1


def _first_and_weights(strategy: str, L: int, shallow_k: int, selection: dict | None) -> tuple[int, float]:
    """(lowest layer the backward reaches, share of the encoder's matrices with weight gradients) of a strategy; a band
    not yet selected sits in the middle of the model."""
    name = family(strategy)
    if name == "full":
        return 0, 1.0
    if name == "shallow":
        return L - shallow_k, shallow_k / L
    if name in ("bitfit", "lora_all", "ia3_all", "prefix", "none", "head"):
        return 0, 0.0
    if selection is None:
        return L // 2, 0.0
    band = (
        list(selection["random"][int(strategy.rpartition("_")[2])]["layers"])
        if name == "lora_random"
        else list(
            selection.get(
                {"lora_top": "top", "lora_complement": "complement", "lora_rgn": "rgn", "lora_cka": "cka"}.get(
                    name, "band"
                ),
                [],
            )
        )
    )
    if name == "lora_selective_tau_ctrl" and selection.get("random"):
        band += list(selection["random"][0]["layers"])
    return (min(band) if band else 0), 0.0


def group_work(
    params: Any, config: Mapping[str, Any], tok: Tokens, stage: str, group: Group, selection: dict | None = None
) -> Work:
    """Work of one matrix item of a per-group stage: diagnose, intervene, finetune, finetune_peft, finetune_tau."""
    m, _ = tok.of(f"{group.target}_train")
    measured = params.diagnose.batches * params.diagnose.batch_size * m
    if stage == "diagnose":
        return Work(measure=pass_flops(config, measured, m, "measure"))
    if stage == "intervene":
        others = [t for t in params.intervene.temperatures if t != 1.0]
        runs = 1 + len(others) * (2 + _draws(params))
        return Work(measure=runs * pass_flops(config, measured, m, "measure"))
    if stage == "select":
        return Work()
    return finetune_work(
        params,
        config,
        tok,
        group,
        {"finetune": "plain", "finetune_peft": "peft", "finetune_tau": "tau"}[stage],
        selection,
    )


def features_work(params: Any, config: Mapping[str, Any], tok: Tokens) -> Work:
    """Every source model: the training tokens' states, the SAEs (6 FLOPs per multiply-add of encoder and decoder,
    per epoch), and each analysed cell's states on the analysis sample."""
    f, d = params.features, config["hidden_size"]
    L, n_src = config["num_hidden_layers"], len(sources(params.study))
    sae = 6 * f.train_tokens * d * f.expansion * d * 2 * f.epochs * L
    held = sum(_eval_tokens(params, tok, t)[0] * _eval_tokens(params, tok, t)[1] for t in params.study.targets)
    cells = len([s for s in params.analysis.strategies if s != "none"])
    forward = pass_flops(config, f.train_tokens, 20, "forward") + (1 + cells) * pass_flops(config, held, 20, "forward")
    return Work(forward=n_src * forward, extra=n_src * sae)


def stage_work(params: Any, config: Mapping[str, Any], tok: Tokens, stage: str, selection: dict | None = None) -> Work:
    """Work of one stage as `dvc status` names it: `source@over-42`, `finetune_peft@rt-over-42`, `features`, ..."""
    name, _, item = stage.partition("@")
    if name == "source":
        return source_work(params, config, tok, item.split("-")[0])
    if item:
        return group_work(params, config, tok, name, Group.parse(item), selection)
    if name == "features":
        return features_work(params, config, tok)
    return Work()  # validate, prepare, cka, probes, report: start-up and small analyses


def all_stages(params: Any) -> list[str]:
    """Every stage name of the pipeline, as dvc.yaml's matrix expands it."""
    per_group = ["diagnose", "select", "intervene", "finetune", "finetune_peft", "finetune_tau"]
    return (
        ["validate", "prepare"]
        + [f"source@{s.name}" for s in sources(params.study)]
        + [f"{st}@{g.name}" for st in per_group for g in groups(params.study)]
        + ["cka", "probes", "features", "report"]
    )


def seconds(work: Work, rates: Mapping[str, float]) -> float:
    """Estimated wall seconds: each kind's FLOPs over its measured rate, plus the start-up of each process."""
    return sum(getattr(work, k) / rates[k] for k in KINDS if getattr(work, k)) + work.starts * rates["start"]


def floor_seconds(work: Work, peak: float) -> float:
    """The work's FLOPs over the machine's large-shape matrix-product throughput: the least time any engine needs."""
    return work.flops() / peak


def decided_precision(params: Any) -> str:
    """The precision this machine's stages train in: as set, or as `auto` decided here before (fp32 if never)."""
    if params.model.precision != "auto":
        return params.model.precision
    return (recall("precision.json", machine_key(params.model.name)) or {}).get("name", "fp32")


def known_rates(model_name: str, precision: str) -> dict | None:
    """The rates a probe measured on this machine for this model and precision (tools/estimate.py), or None."""
    return recall(CACHE, f"{machine_key(model_name)}|{precision}")


def stage_estimate(
    params: Any, config: Mapping[str, Any], tok: Tokens, stage: str, precision: str, selection: dict | None = None
) -> float | None:
    """What a stage records as its estimate before it starts: None where no probe has run on this machine."""
    rates = known_rates(params.model.name, precision)
    if rates is None:
        return None
    estimate = round(seconds(stage_work(params, config, tok, stage, selection), rates), 1)
    logger.info("%s: estimated %s on this machine", stage, describe(estimate))
    return estimate


def describe(total: float) -> str:
    """Seconds as '1 h 05 min', '12 min 30 s' or '45 s'."""
    total = max(0.0, total)
    h, rest = divmod(math.ceil(total), 3600)
    mnt, s = divmod(rest, 60)
    return f"{h} h {mnt:02d} min" if h else f"{mnt} min {s:02d} s" if mnt else f"{s} s"
