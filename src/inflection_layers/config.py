"""params.yaml, read once and validated against one typed schema before any expensive work.

Every section of params.yaml is a frozen dataclass below, with types and ranges but **no default
values**: the values live only in ``conf/config.yaml`` and the profiles (``conf/profile/*.yaml``),
which DVC composes into params.yaml. A missing key, an unknown key, a wrong type or an
out-of-range value raises :class:`ParamError`, which names the full key, the value and what is
allowed (nanoGPT: ``raise ValueError(f"Unknown config key: {key}")``; peft: refuse bad
combinations in ``__post_init__``). Constraints that need the model's depth or the data's size are
checked by the ``validate`` stage (:mod:`inflection_layers.validate`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from inflection_layers.cells import EVAL_SPLITS, LORA_STRATEGIES, PLAIN_STRATEGIES, REGIMES, TARGETS
from inflection_layers.errors import ParamError

PRECISIONS = ("auto", "fp32", "bf16")
LORA_TARGETS = ("query", "key", "value", "attention_output")  # the study's names; modeling maps them per architecture


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamError(key, value, allowed)


def _unique_nonempty(key: str, xs: list, allowed: tuple[str, ...] | None = None) -> None:
    _check(len(xs) > 0 and len(set(xs)) == len(xs), key, xs, "a non-empty list without repeats")
    for x in xs:
        _check(allowed is None or x in allowed, key, x, f"values among {list(allowed or ())}")


def _positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        _check(getattr(obj, name) >= 1, f"{section}.{name}", getattr(obj, name), "an integer >= 1")


def _rate(key: str, value: float) -> None:
    _check(0 < value < 1, key, value, "a float in (0, 1)")


@dataclasses.dataclass(frozen=True)
class Study:
    """The matrix: targets x regimes x seeds, and the adaptation strategies of each group.

    Strategies come in two lists because DVC declares parameters per stage: the LoRA cells run in
    their own stage (`finetune_lora`), so a change of `lora.*` or of the selection reruns only them.
    """

    profile: str
    targets: list[str]
    regimes: list[str]
    seeds: list[int]
    strategies: list[str]
    lora_strategies: list[str]

    def __post_init__(self) -> None:
        _check(bool(self.profile.strip()), "study.profile", self.profile, "a non-empty name")
        _unique_nonempty("study.targets", self.targets, TARGETS)
        _unique_nonempty("study.regimes", self.regimes, REGIMES)
        _unique_nonempty("study.seeds", self.seeds)
        _unique_nonempty("study.strategies", self.strategies, PLAIN_STRATEGIES)
        _check(len(set(self.lora_strategies)) == len(self.lora_strategies), "study.lora_strategies", self.lora_strategies, "a list without repeats")
        for s in self.lora_strategies:
            _check(s in LORA_STRATEGIES, "study.lora_strategies", s, f"values among {list(LORA_STRATEGIES)}")
        _check("none" in self.strategies, "study.strategies", self.strategies, "a list that includes 'none' (the source model: the 'before' of every comparison)")
        for s in self.seeds:
            _check(s >= 0, "study.seeds", s, "integers >= 0")


@dataclasses.dataclass(frozen=True)
class Data:
    """Where SST-2, Rotten Tomatoes and CR come from, and the SST-2 sample the source models train on."""

    source: str
    dir: str
    sst2_subsample: int
    subsample_seed: int
    eval_subsample: int
    verify_checksums: bool

    def __post_init__(self) -> None:
        _check(self.source in ("auto", "local", "hub"), "data.source", self.source, "one of ['auto', 'local', 'hub']")
        _check(bool(self.dir.strip()), "data.dir", self.dir, "a directory path")
        _check(self.sst2_subsample >= 0, "data.sst2_subsample", self.sst2_subsample, "an integer >= 0 (0 = all 67,349)")
        _check(self.subsample_seed >= 0, "data.subsample_seed", self.subsample_seed, "an integer >= 0")
        _check(self.eval_subsample >= 0, "data.eval_subsample", self.eval_subsample, "an integer >= 0 (0 = every example)")


@dataclasses.dataclass(frozen=True)
class Model:
    """Which pre-trained encoder, at which precision."""

    name: str
    max_length: int
    precision: str

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name", self.name, "'packaged', 'packaged-base', a hub model name or a local directory")
        _check(8 <= self.max_length <= 512, "model.max_length", self.max_length, "an integer in [8, 512]")
        _check(self.precision in PRECISIONS, "model.precision", self.precision, f"one of {list(PRECISIONS)}")


@dataclasses.dataclass(frozen=True)
class Source:
    """Full fine-tuning on SST-2: the UNDER and OVER source models."""

    epochs_under: int
    epochs_over: int
    lr: float
    batch_size: int
    schedule: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    eval_batch_size: int
    dev_every: int

    def __post_init__(self) -> None:
        _positive("source", self, "epochs_under", "epochs_over", "batch_size", "eval_batch_size", "dev_every")
        _rate("source.lr", self.lr)
        _check(self.schedule in ("linear", "constant"), "source.schedule", self.schedule, "one of ['linear', 'constant']")
        _check(0 <= self.warmup_ratio < 1, "source.warmup_ratio", self.warmup_ratio, "a float in [0, 1)")
        _check(self.weight_decay >= 0, "source.weight_decay", self.weight_decay, "a float >= 0")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "source.max_grad_norm", self.max_grad_norm, "a float > 0, or null for no clipping")

    def epochs(self, regime: str) -> int:
        """Number of SST-2 epochs of a regime."""
        return {"under": self.epochs_under, "over": self.epochs_over}[regime]


@dataclasses.dataclass(frozen=True)
class Diagnose:
    """Diagnostics of a source model on the target's train split (backward passes, no update)."""

    batches: int
    batch_size: int

    def __post_init__(self) -> None:
        _positive("diagnose", self, "batches", "batch_size")


@dataclasses.dataclass(frozen=True)
class Ski:
    """Layer selection: SKI(l) = alpha (1 - H_l / max H) + (1 - alpha)(1 - G_l / max G), and the controls' draws."""

    method: str
    alpha: float
    s: int
    threshold: float
    max_band: int | None
    random_draws: int

    def __post_init__(self) -> None:
        _check(self.method in ("local_max", "greedy"), "ski.method", self.method, "one of ['local_max', 'greedy']")
        _check(0 <= self.alpha <= 1, "ski.alpha", self.alpha, "a float in [0, 1]")
        _check(self.s >= 0, "ski.s", self.s, "an integer >= 0")
        _check(0 < self.threshold <= 1, "ski.threshold", self.threshold, "a float in (0, 1]")
        _check(self.max_band is None or self.max_band >= 1, "ski.max_band", self.max_band, "an integer >= 1, or null for no cap")
        _check(self.random_draws >= 1, "ski.random_draws", self.random_draws, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class StrategyLr:
    """The learning rate of each non-LoRA strategy (LoRA strategies use `lora.lr`)."""

    head: float
    shallow: float
    full: float
    bitfit: float

    def __post_init__(self) -> None:
        for name in ("head", "shallow", "full", "bitfit"):
            _rate(f"finetune.lr.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Adaptation to the target task (paper: 300 steps, AdamW, lr 2e-5, batch 16)."""

    steps: int
    batch_size: int
    lr: StrategyLr
    schedule: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    shallow_k: int
    eval_batch_size: int
    diag_every: int
    eval_splits: list[str]

    def __post_init__(self) -> None:
        _positive("finetune", self, "steps", "batch_size", "shallow_k", "eval_batch_size", "diag_every")
        _check(self.schedule in ("linear", "constant"), "finetune.schedule", self.schedule, "one of ['linear', 'constant']")
        _check(0 <= self.warmup_ratio < 1, "finetune.warmup_ratio", self.warmup_ratio, "a float in [0, 1)")
        _check(self.weight_decay >= 0, "finetune.weight_decay", self.weight_decay, "a float >= 0")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "finetune.max_grad_norm", self.max_grad_norm, "a float > 0, or null for no clipping")
        _check(self.eval_splits in (list(EVAL_SPLITS[:1]), list(EVAL_SPLITS)), "finetune.eval_splits", self.eval_splits,
               f"{list(EVAL_SPLITS[:1])} or {list(EVAL_SPLITS)} (validation first: it is the analysis sample's first part)")


@dataclasses.dataclass(frozen=True)
class Lora:
    """peft LoRA of the lora_* strategies (paper: r 4, alpha 16, dropout 0.05 on query, key, value)."""

    rank: int
    alpha: int
    dropout: float
    targets: list[str]
    lr: float

    def __post_init__(self) -> None:
        _positive("lora", self, "rank", "alpha")
        _check(0 <= self.dropout < 1, "lora.dropout", self.dropout, "a float in [0, 1)")
        _unique_nonempty("lora.targets", self.targets, LORA_TARGETS)
        _rate("lora.lr", self.lr)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Representations of the analysis sample: which cells keep them, and Delta-CKA's settings."""

    strategies: list[str]
    pooling: str
    pca_dim: int

    def __post_init__(self) -> None:
        _unique_nonempty("analysis.strategies", self.strategies, PLAIN_STRATEGIES + LORA_STRATEGIES)
        _check("none" in self.strategies, "analysis.strategies", self.strategies, "a list that includes 'none' (the 'before' of Delta-CKA)")
        _check(self.pooling in ("cls", "mean"), "analysis.pooling", self.pooling, "one of ['cls', 'mean']")
        _check(self.pca_dim >= 1, "analysis.pca_dim", self.pca_dim, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Probe:
    """Linear and MLP probes per layer on the analysis sample, with shuffled-label controls."""

    train_fraction: float
    hidden: int
    dropout: float
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    controls: int
    seed: int

    def __post_init__(self) -> None:
        _check(0 < self.train_fraction < 1, "probe.train_fraction", self.train_fraction, "a float in (0, 1): the share of the analysis sample the probes train on")
        _positive("probe", self, "hidden", "epochs", "batch_size", "controls")
        _check(0 <= self.dropout < 1, "probe.dropout", self.dropout, "a float in [0, 1)")
        _rate("probe.lr", self.lr)
        _check(self.weight_decay >= 0, "probe.weight_decay", self.weight_decay, "a float >= 0")
        _check(self.seed >= 0, "probe.seed", self.seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Report:
    """Statistics of the report: seed-level intervals, bootstrap, tests, power."""

    bootstrap: int
    confidence: float
    alpha: float
    power: float
    seed: int

    def __post_init__(self) -> None:
        _check(self.bootstrap >= 100, "report.bootstrap", self.bootstrap, "an integer >= 100")
        _check(0 < self.confidence < 1, "report.confidence", self.confidence, "a float in (0, 1)")
        _check(0 < self.alpha < 1, "report.alpha", self.alpha, "a float in (0, 1)")
        _check(0 < self.power < 1, "report.power", self.power, "a float in (0, 1)")
        _check(self.seed >= 0, "report.seed", self.seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one Slurm job of a stage asks for."""

    cpus: int
    gpus: int
    minutes: int
    mem_gb: int

    def __post_init__(self) -> None:
        _positive("cluster.resources.*", self, "cpus", "minutes", "mem_gb")
        _check(self.gpus >= 0, "cluster.resources.*.gpus", self.gpus, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Slurm submission of the DAG (`python -m inflection_layers.cluster`): partition and per-stage resources."""

    partition: str | None
    resources: dict[str, Resources]

    def __post_init__(self) -> None:
        _check("default" in self.resources, "cluster.resources", sorted(self.resources), "a mapping with a 'default' entry")


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
    analysis: Analysis
    probe: Probe
    report: Report
    cluster: Cluster

    def lr(self, strategy: str) -> float:
        """The learning rate of a strategy: `lora.lr` for the LoRA family, `finetune.lr.<strategy>` otherwise."""
        from inflection_layers.cells import family

        name = family(strategy)
        return self.lora.lr if name in LORA_STRATEGIES else getattr(self.finetune.lr, name)


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a field annotation (int is not bool; an int is a valid float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
    text = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return names.get(text, f"a value of type {text}")


def _value(tp: Any, raw: Any, key: str) -> Any:
    """One field's value: a nested dataclass, a mapping of dataclasses, or a plain value of the annotated type."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, key)
    if typing.get_origin(tp) is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(raw, dict) or not raw:
            raise ParamError(key, raw, "a non-empty mapping")
        return {str(k): _build(inner, v, f"{key}.{k}") for k, v in raw.items()}
    if not _type_ok(raw, tp):
        raise ParamError(key, raw, _describe(tp))
    return float(raw) if tp is float else raw


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a YAML mapping into the dataclass `cls`: unknown, missing and mistyped keys are errors."""
    if not isinstance(raw, dict):
        raise ParamError(prefix or "params.yaml", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ParamError(full, raw[key], f"no such key; known keys here: {fields}")
    for key in fields:
        if key not in raw:
            full = f"{prefix}.{key}" if prefix else key
            raise ParamError(full, "(missing)", f"a value: every key is set in conf/config.yaml or a profile ({_describe(hints[key])})")
    return cls(**{key: _value(hints[key], raw[key], f"{prefix}.{key}" if prefix else key) for key in fields})


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml) and return the typed :class:`Params`."""
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every stage calls this first, before loading data or models."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(str(path), "(missing)", "a params.yaml in the repository root: run the stage from there")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamError(str(path), "(unreadable)", f"valid YAML ({str(e).splitlines()[0]})") from e
    return parse_params(raw)


def as_dict(section: Any) -> dict:
    """A params section as a plain dict, e.g. to save beside a checkpoint."""
    return dataclasses.asdict(section)
