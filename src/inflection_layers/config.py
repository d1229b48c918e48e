"""params.yaml, read once and validated against one typed schema before any expensive work.

Every section of params.yaml is a frozen dataclass below; each field carries its type and its rule
(``Annotated[int, AtLeast(1)]``) and **no default value**: the values live only in
``conf/config.yaml`` and the profiles (``conf/profile/*.yaml``), which DVC composes into params.yaml.
A missing key, an unknown key, a wrong type or an out-of-range value raises :class:`ParamError`,
which names the full key, the value and what is allowed (nanoGPT: ``raise ValueError(f"Unknown
config key: {key}")``; peft: refuse bad combinations in ``__post_init__``). Constraints that need the
model's depth or the data's size are checked by the ``validate`` stage (:mod:`inflection_layers.validate`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml

from inflection_layers.cells import (
    EVAL_SPLITS,
    IA3_STRATEGIES,
    LORA_STRATEGIES,
    PEFT_STRATEGIES,
    PLAIN_STRATEGIES,
    REGIMES,
    STRATEGIES,
    TARGETS,
    TAU_STRATEGIES,
    family,
)
from inflection_layers.errors import ParamError

PRECISIONS = ("auto", "fp32", "bf16")
LORA_TARGETS = ("query", "key", "value", "attention_output")  # the study's names; modeling maps them per architecture


@dataclasses.dataclass(frozen=True)
class AtLeast:
    """A number >= low (None passes where the type allows it)."""

    low: float

    def ok(self, v: Any) -> bool:
        return v is None or (all(x >= self.low for x in v) if isinstance(v, list) else v >= self.low)

    def allowed(self, tp: str) -> str:
        return f"{tp} >= {self.low:g}" + (" each" if tp.startswith("a value of type list") else "")


@dataclasses.dataclass(frozen=True)
class Between:
    """A number in an interval; `brackets` gives its ends, e.g. "(]" for lo < v <= hi."""

    lo: float
    hi: float
    brackets: str

    def ok(self, v: Any) -> bool:
        if v is None:
            return True
        low = v >= self.lo if self.brackets[0] == "[" else v > self.lo
        high = v <= self.hi if self.brackets[1] == "]" else v < self.hi
        return low and high

    def allowed(self, tp: str) -> str:
        return f"{tp} in {self.brackets[0]}{self.lo:g}, {self.hi:g}{self.brackets[1]}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a few values; for a list, every item (and, with `unique`, no repeats and not empty)."""

    values: tuple | None = None
    unique: bool = False
    empty: bool = False  # an empty list is allowed

    def ok(self, v: Any) -> bool:
        items = v if isinstance(v, list) else [v]
        fine = self.values is None or all(x in self.values for x in items)
        return fine and (not self.unique or ((len(items) > 0 or self.empty) and len(set(items)) == len(items)))

    def allowed(self, tp: str) -> str:
        among = f"values among {list(self.values)}" if self.values is not None else ""
        if not self.unique:
            return f"one of {list(self.values)}"
        return ("a list" if self.empty else "a non-empty list") + " without repeats" + (f" of {among}" if among else "")


@dataclasses.dataclass(frozen=True)
class CountOr:
    """An integer >= 1, or one word ('all', 'auto')."""

    word: str

    def ok(self, v: Any) -> bool:
        return v == self.word or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)

    def allowed(self, tp: str) -> str:
        return f"an integer >= 1 or '{self.word}'"


RATE = Between(0, 1, "()")
POSITIVE = AtLeast(1)
NONNEGATIVE = AtLeast(0)
Count = Annotated[int, POSITIVE]


@dataclasses.dataclass(frozen=True)
class Study:
    """The matrix: targets x regimes x seeds, and the adaptation strategies of each group.

    Strategies come in three lists, one per stage, because DVC declares parameters per stage: the peft cells
    (`finetune_peft`) also read the selection and `lora.*`, the intervention cells (`finetune_tau`) `intervene.*`,
    so a change of either reruns only its stage.
    """

    profile: str  # the profile's name, recorded in the report
    targets: Annotated[list[str], OneOf(TARGETS, unique=True)]
    regimes: Annotated[list[str], OneOf(REGIMES, unique=True)]
    seeds: Annotated[list[int], OneOf(unique=True)]
    strategies: Annotated[list[str], OneOf(PLAIN_STRATEGIES, unique=True)]
    peft_strategies: Annotated[list[str], OneOf(PEFT_STRATEGIES, unique=True, empty=True)]
    tau_strategies: Annotated[list[str], OneOf(TAU_STRATEGIES, unique=True, empty=True)]

    def __post_init__(self) -> None:
        _require(bool(self.profile.strip()), "study.profile", self.profile, "a non-empty name")
        _require(
            "none" in self.strategies,
            "study.strategies",
            self.strategies,
            "a list that includes 'none' (the source model: the 'before' of every comparison)",
        )
        _require(all(s >= 0 for s in self.seeds), "study.seeds", self.seeds, "integers >= 0")


@dataclasses.dataclass(frozen=True)
class Data:
    """Where SST-2, Rotten Tomatoes and CR come from, and the SST-2 sample the source models train on."""

    source: Annotated[str, OneOf(("auto", "local", "hub"))]
    dir: str
    sst2_subsample: Annotated[int, NONNEGATIVE]  # 0 = all 67,349
    subsample_seed: Annotated[int, NONNEGATIVE]
    eval_subsample: Annotated[int, NONNEGATIVE]  # 0 = every example
    verify_checksums: bool


@dataclasses.dataclass(frozen=True)
class Model:
    """Which pre-trained encoder, at which precision."""

    name: str
    max_length: Annotated[int, Between(8, 512, "[]")]
    precision: Annotated[str, OneOf(PRECISIONS)]

    def __post_init__(self) -> None:
        _require(
            bool(self.name.strip()),
            "model.name",
            self.name,
            "'packaged', 'packaged-base', a hub model name or a local directory",
        )


@dataclasses.dataclass(frozen=True)
class Source:
    """Full fine-tuning on SST-2: the UNDER and OVER source models."""

    epochs_under: Count
    epochs_over: Count
    lr: Annotated[float, RATE]
    batch_size: Count
    schedule: Annotated[str, OneOf(("linear", "constant"))]
    warmup_ratio: Annotated[float, Between(0, 1, "[)")]
    weight_decay: Annotated[float, NONNEGATIVE]
    max_grad_norm: Annotated[float | None, Between(0, float("inf"), "()")]  # null: no clipping
    eval_batch_size: Count
    dev_every: Count

    def epochs(self, regime: str) -> int:
        """Number of SST-2 epochs of a regime."""
        return {"under": self.epochs_under, "over": self.epochs_over}[regime]


@dataclasses.dataclass(frozen=True)
class Diagnose:
    """Diagnostics of a source model on the target's train split (backward passes, no update)."""

    batches: Count
    batch_size: Count


@dataclasses.dataclass(frozen=True)
class Ski:
    """Layer selection: SKI(l) = alpha (1 - H_l / max H) + (1 - alpha)(1 - G_l / max G), and the controls' draws."""

    method: Annotated[str, OneOf(("local_max", "greedy"))]
    alpha: Annotated[float, Between(0, 1, "[]")]
    s: Annotated[int, NONNEGATIVE]
    threshold: Annotated[float, Between(0, 1, "(]")]
    max_band: Annotated[int | None, POSITIVE]  # null: no cap
    random_draws: Annotated[int | str, CountOr("all")]  # 'all': every other band of the band's size


@dataclasses.dataclass(frozen=True)
class StrategyLr:
    """One learning rate per method family (LoRA, every selector and intervention cell, uses `lora.lr`)."""

    head: Annotated[float, RATE]
    shallow: Annotated[float, RATE]
    full: Annotated[float, RATE]
    bitfit: Annotated[float, RATE]
    ia3: Annotated[float, RATE]
    prefix: Annotated[float, RATE]


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Adaptation to the target task (paper: 300 steps, AdamW, lr 2e-5, batch 16)."""

    steps: Count
    batch_size: Count
    lr: StrategyLr
    schedule: Annotated[str, OneOf(("linear", "constant"))]
    warmup_ratio: Annotated[float, Between(0, 1, "[)")]
    weight_decay: Annotated[float, NONNEGATIVE]
    max_grad_norm: Annotated[float | None, Between(0, float("inf"), "()")]
    shallow_k: Count
    prefix_tokens: Count  # virtual tokens of prefix tuning
    cells_per_pass: Annotated[
        int | str, CountOr("auto")
    ]  # peft LoRA cells stacked into one pass; auto: a probe decides
    eval_batch_size: Count
    diag_every: Count
    eval_splits: list[str]

    def __post_init__(self) -> None:
        _require(
            self.eval_splits in (list(EVAL_SPLITS[:1]), list(EVAL_SPLITS)),
            "finetune.eval_splits",
            self.eval_splits,
            f"{list(EVAL_SPLITS[:1])} or {list(EVAL_SPLITS)} (validation first: it is the analysis sample's first part)",
        )


@dataclasses.dataclass(frozen=True)
class Intervene:
    """The attention-temperature intervention at the SKI band (stages `intervene` and `finetune_tau`)."""

    temperatures: Annotated[list[float], AtLeast(0.01)]  # tau of the diagnostic intervention; 1 is the baseline
    adapt_temperature: Annotated[float, AtLeast(0.01)]  # tau of lora_selective_tau and lora_selective_tau_ctrl
    anneal_from: Annotated[float, AtLeast(0.01)]  # lora_selective_anneal: tau falls from this to 1
    anneal_steps: Annotated[int | None, POSITIVE]  # over these first steps; null: the first third of finetune.steps
    diag_every: Count  # adaptation diagnostics this often inside the annealing window

    def __post_init__(self) -> None:
        _require(
            1.0 in self.temperatures and len(set(self.temperatures)) == len(self.temperatures),
            "intervene.temperatures",
            self.temperatures,
            "a list without repeats that includes 1 (the unperturbed model every tau is compared with)",
        )

    def window(self, steps: int) -> int:
        """The annealing window in steps: `anneal_steps`, or the first third of training."""
        return self.anneal_steps if self.anneal_steps is not None else max(1, steps // 3)


@dataclasses.dataclass(frozen=True)
class Features:
    """Sparse autoencoders per source model and layer (stage `features`)."""

    train_tokens: Count  # token activations (padding excluded) of the source and target train sentences
    expansion: Count  # dictionary size = expansion x the hidden size
    k: Count  # TopK: active latents per token
    epochs: Count
    batch_size: Count
    lr: Annotated[float, RATE]
    seed: Annotated[int, NONNEGATIVE]


@dataclasses.dataclass(frozen=True)
class Lora:
    """peft LoRA of the lora_* strategies (paper: r 4, alpha 16, dropout 0.05 on query, key, value)."""

    rank: Count
    alpha: Count
    dropout: Annotated[float, Between(0, 1, "[)")]
    targets: Annotated[list[str], OneOf(LORA_TARGETS, unique=True)]
    lr: Annotated[float, RATE]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Representations of the analysis sample: which cells keep them, and Delta-CKA's settings."""

    strategies: Annotated[list[str], OneOf(STRATEGIES, unique=True)]
    pooling: Annotated[str, OneOf(("cls", "mean"))]
    pca_dim: Count

    def __post_init__(self) -> None:
        _require(
            "none" in self.strategies,
            "analysis.strategies",
            self.strategies,
            "a list that includes 'none' (the 'before' of Delta-CKA)",
        )


@dataclasses.dataclass(frozen=True)
class Probe:
    """Linear and MLP probes per layer on the analysis sample, with shuffled-label controls."""

    train_fraction: Annotated[float, Between(0, 1, "()")]  # the share of the analysis sample the probes train on
    hidden: Count
    dropout: Annotated[float, Between(0, 1, "[)")]
    lr: Annotated[float, RATE]
    weight_decay: Annotated[float, NONNEGATIVE]
    epochs: Count
    batch_size: Count
    controls: Count
    seed: Annotated[int, NONNEGATIVE]


@dataclasses.dataclass(frozen=True)
class Report:
    """Statistics of the report: seed-level intervals, bootstrap, tests, power."""

    bootstrap: Annotated[int, AtLeast(100)]  # hierarchical bootstrap resamples
    confidence: Annotated[float, RATE]  # the level of every interval
    alpha: Annotated[float, RATE]  # test level
    power: Annotated[float, RATE]  # for the smallest detectable effect
    seed: Annotated[int, NONNEGATIVE]


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one Slurm job of a stage asks for."""

    cpus: Count
    gpus: Annotated[int, NONNEGATIVE]
    minutes: Count
    mem_gb: Count


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Slurm submission of the DAG (`python -m inflection_layers.tools.cluster`): partition and per-stage resources."""

    partition: str | None
    resources: dict[str, Resources]

    def __post_init__(self) -> None:
        _require(
            "default" in self.resources, "cluster.resources", sorted(self.resources), "a mapping with a 'default' entry"
        )


@dataclasses.dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    study: Study
    data: Data
    model: Model
    source: Source
    diagnose: Diagnose
    ski: Ski
    finetune: Finetune
    lora: Lora
    intervene: Intervene
    features: Features
    analysis: Analysis
    probe: Probe
    report: Report
    cluster: Cluster

    def lr(self, strategy: str) -> float:
        """One rate per method family: `lora.lr` for every LoRA cell (selectors and interventions alike, so no band
        gets a rate of its own), `finetune.lr.ia3` for both IA3 cells, `finetune.lr.<strategy>` otherwise."""
        name = family(strategy)
        if name in LORA_STRATEGIES + TAU_STRATEGIES:
            return self.lora.lr
        return self.finetune.lr.ia3 if name in IA3_STRATEGIES else getattr(self.finetune.lr, name)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamError(key, value, allowed)


def _split(tp: Any) -> tuple[Any, tuple]:
    """(the type, its rules) of a field annotation, ``Annotated[T, rule, ...]`` or a plain type."""
    if typing.get_origin(tp) is Annotated:
        base, *rules = typing.get_args(tp)
        return base, tuple(rules)
    return tp, ()


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a type (int is not bool; an int is a valid float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if tp is type(None):
        return value is None
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    names = {
        "int": "an integer",
        "float": "a float",
        "str": "a string",
        "bool": "true or false",
        "int | None": "an integer or null",
        "float | None": "a float or null",
        "str | None": "a string or null",
    }
    text = getattr(tp, "__name__", None) if not isinstance(tp, types.UnionType) else None
    text = text or str(tp).replace("typing.", "")
    return names.get(text, f"a value of type {text}")


def _value(tp: Any, raw: Any, key: str) -> Any:
    """One field's value: a nested dataclass, a mapping of dataclasses, or a plain value of its type that passes its rules."""
    tp, rules = _split(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, key)
    if typing.get_origin(tp) is dict:
        _, inner = typing.get_args(tp)
        _require(isinstance(raw, dict) and bool(raw), key, raw, "a non-empty mapping")
        return {str(k): _build(inner, v, f"{key}.{k}") for k, v in raw.items()}
    _require(_type_ok(raw, tp), key, raw, _describe(tp))
    nullable = type(None) in typing.get_args(tp)
    for rule in rules:
        _require(
            rule.ok(raw),
            key,
            raw,
            rule.allowed(_describe(tp).removesuffix(" or null")) + (", or null" if nullable else ""),
        )
    return float(raw) if tp is float else raw


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a YAML mapping into the dataclass `cls`: unknown, missing and mistyped keys are errors."""
    _require(isinstance(raw, dict), prefix or "params.yaml", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        _require(
            key in fields,
            f"{prefix}.{key}" if prefix else str(key),
            raw[key],
            f"no such key; known keys here: {fields}",
        )
    for key in fields:
        _require(
            key in raw,
            f"{prefix}.{key}" if prefix else key,
            "(missing)",
            f"a value: every key is set in conf/config.yaml or a profile ({_describe(_split(hints[key])[0])})",
        )
    return cls(**{key: _value(hints[key], raw[key], f"{prefix}.{key}" if prefix else key) for key in fields})


def parse_section(cls: type, raw: Any, key: str) -> Any:
    """Validate one section of a params mapping (e.g. `cluster` for the Slurm adapter) with the same rules."""
    return _build(cls, raw, key)


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml) and return the typed :class:`Params`."""
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every stage calls this first, before loading data or models."""
    path = Path(path)
    _require(path.is_file(), str(path), "(missing)", "a params.yaml in the repository root: run the stage from there")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamError(str(path), "(unreadable)", f"valid YAML ({str(e).splitlines()[0]})") from e
    return parse_params(raw)


def as_dict(section: Any) -> dict:
    """A params section as a plain dict, e.g. to save beside a checkpoint."""
    return dataclasses.asdict(section)
