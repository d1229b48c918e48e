"""params.yaml, read once and validated against one typed schema before any expensive work.

Every section of params.yaml is a frozen dataclass below; each field carries its type and its rule
(``Annotated[int, AtLeast(1)]``, :mod:`inflection_layers.schema`) and **no default value**: the values live only
in ``conf/config.yaml`` and the profiles (``conf/profile/*.yaml``), which DVC composes into params.yaml. A missing
key, an unknown key, a wrong type or an out-of-range value raises :class:`ParamError` naming the key. Constraints
that need the model's depth or the data's size are checked by the `validate` stage (:mod:`inflection_layers.validate`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

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
from inflection_layers.schema import (
    NONNEGATIVE,
    POSITIVE,
    RATE,
    AtLeast,
    Between,
    Count,
    CountOr,
    OneOf,
    build,
    require,
)

PRECISIONS = ("auto", "fp32", "bf16")
LORA_TARGETS = ("query", "key", "value", "attention_output")  # the study's names; modeling maps them per architecture


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
        require(bool(self.profile.strip()), "study.profile", self.profile, "a non-empty name")
        require(
            "none" in self.strategies,
            "study.strategies",
            self.strategies,
            "a list that includes 'none' (the source model: the 'before' of every comparison)",
        )
        require(all(s >= 0 for s in self.seeds), "study.seeds", self.seeds, "integers >= 0")


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
        require(
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
        require(
            self.eval_splits in (list(EVAL_SPLITS[:1]), list(EVAL_SPLITS)),
            "finetune.eval_splits",
            self.eval_splits,
            f"{list(EVAL_SPLITS[:1])} or {list(EVAL_SPLITS)} "
            "(validation first: it is the analysis sample's first part)",
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
        require(
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
        require(
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
class Sesoi:
    """Smallest effects of interest of our claims (data/paper/decisions.csv names which part uses which)."""

    accuracy: Annotated[float, RATE]  # a difference of accuracy (fraction of 1)
    margin: Annotated[float, RATE]  # non-inferiority and equivalence margin on accuracy (fraction of 1)
    entropy: Annotated[float, AtLeast(0)]  # nats
    log_ratio: Annotated[float, AtLeast(0)]  # a change of a gradient-norm ratio, natural log
    cka: Annotated[float, AtLeast(0)]  # 1 - CKA
    rho: Annotated[float, RATE]  # a correlation
    slope: Annotated[float, AtLeast(0)]  # cosine similarity per layer
    fvu: Annotated[float, AtLeast(0)]  # excess fraction of variance unexplained per unit of shift


@dataclasses.dataclass(frozen=True)
class Report:
    """Statistics of the report: seed-level intervals, verdict rules, bootstrap, prospective power."""

    bootstrap: Annotated[int, AtLeast(100)]  # hierarchical bootstrap resamples
    confidence: Annotated[float, RATE]  # the level of every interval (equivalence: 1 - 2 alpha)
    alpha: Annotated[float, RATE]  # test level
    power: Annotated[float, RATE]  # of the prospective power table
    about: Annotated[float, AtLeast(1.01)]  # "about x" means within [x / about, x * about]
    sesoi: Sesoi
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
        require(
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


def parse_section(cls: type, raw: Any, key: str) -> Any:
    """Validate one section of a params mapping (e.g. `cluster` for the Slurm adapter) with the same rules."""
    return build(cls, raw, key)


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml) and return the typed :class:`Params`."""
    return build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every stage calls this first, before loading data or models."""
    path = Path(path)
    require(path.is_file(), str(path), "(missing)", "a params.yaml in the repository root: run the stage from there")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamError(str(path), "(unreadable)", f"valid YAML ({str(e).splitlines()[0]})") from e
    return parse_params(raw)


def as_dict(section: Any) -> dict:
    """A params section as a plain dict, e.g. to save beside a checkpoint."""
    return dataclasses.asdict(section)
