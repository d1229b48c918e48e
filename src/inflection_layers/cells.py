"""The single definition of the study's units: sources, groups and cells, their names, and the layer index.

- A **source** is one source model: (regime, seed), named ``over-42``.
- A **group** is one source model adapted to one target: (target, regime, seed), named
  ``rt-over-42``. `diagnose`, `select`, `intervene` and the three `finetune` stages run once per group.
- A **cell** is one strategy in one group, named ``rt-over-42/lora_selective``. The random-band
  control has ``ski.random_draws`` cells per group, ``lora_random_0``, ``lora_random_1``, ...;
  their family is ``lora_random``.

A cell's *kind* is the stage that trains it: ``plain`` (`finetune`: none, head, shallow, full, bitfit),
``peft`` (`finetune_peft`: LoRA with every band selector, IA3, prefix tuning) or ``tau`` (`finetune_tau`:
selective LoRA under the attention-temperature intervention). A cell's files live at
``<root>/<group>/<strategy>[suffix]``, where the root is the output folder dvc.yaml gives the stage of its
kind; :func:`locate` finds a cell among the roots it is given.

**Layer index.** Layers are numbered as the encoder numbers them, 0 .. L-1; the embeddings' output is
layer -1. A model's ``hidden_states`` tuple has L + 1 entries, so entry i is layer ``i - 1``
(:func:`layer_of`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from inflection_layers.errors import InputError

TARGETS = ("rt", "cr")
TARGET_NAMES = {"rt": "Rotten Tomatoes", "cr": "customer reviews (CR)"}
REGIMES = ("under", "over")
EVAL_SPLITS = ("validation", "test")
PLAIN_STRATEGIES = ("none", "head", "shallow", "full", "bitfit")  # stage finetune
LORA_STRATEGIES = ("lora_selective", "lora_all", "lora_random", "lora_top", "lora_complement", "lora_rgn", "lora_cka")
IA3_STRATEGIES = ("ia3_all", "ia3_selective")
PEFT_STRATEGIES = LORA_STRATEGIES + IA3_STRATEGIES + ("prefix",)  # stage finetune_peft
TAU_STRATEGIES = ("lora_selective_tau", "lora_selective_tau_ctrl", "lora_selective_anneal")  # stage finetune_tau
STRATEGIES = PLAIN_STRATEGIES + PEFT_STRATEGIES + TAU_STRATEGIES
KINDS = {"plain": PLAIN_STRATEGIES, "peft": PEFT_STRATEGIES, "tau": TAU_STRATEGIES}  # the stage kind of a family
STUDY_LISTS = {"plain": "strategies", "peft": "peft_strategies", "tau": "tau_strategies"}  # its list in `study`
FROZEN_ENCODER = ("none", "head")  # strategies whose encoder does not change: features computed once per group
EMBEDDINGS_LAYER = -1


def layer_of(hidden_state_index: int) -> int:
    """The layer a ``hidden_states`` entry belongs to: entry 0 is the embeddings' output (layer -1)."""
    return hidden_state_index - 1


def family(strategy: str) -> str:
    """The strategy a cell name belongs to: ``lora_random_3`` -> ``lora_random``; others are their own."""
    head, _, tail = strategy.rpartition("_")
    return head if head == "lora_random" and tail.isdigit() else strategy


def draw(strategy: str) -> int | None:
    """The random draw of a ``lora_random_<d>`` cell, else None."""
    return int(strategy.rpartition("_")[2]) if family(strategy) == "lora_random" else None


def kind(strategy: str) -> str:
    """The stage kind of a cell: 'plain' (stage finetune), 'peft' (finetune_peft) or 'tau' (finetune_tau)."""
    name = family(strategy)
    for k, members in KINDS.items():
        if name in members:
            return k
    raise ValueError(f"unknown strategy {strategy!r}; known: {list(STRATEGIES)}")


@dataclasses.dataclass(frozen=True, order=True)
class Source:
    """One source model."""

    regime: str  # under | over
    seed: int  # the training run's seed

    @property
    def name(self) -> str:
        return f"{self.regime}-{self.seed}"


@dataclasses.dataclass(frozen=True, order=True)
class Group:
    """One source model adapted to one target."""

    target: str
    regime: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.target}-{self.regime}-{self.seed}"

    @property
    def source(self) -> Source:
        return Source(self.regime, self.seed)

    @classmethod
    def parse(cls, name: str) -> Group:
        """``rt-over-42`` -> Group('rt', 'over', 42)."""
        target, regime, seed = name.split("-")
        return cls(target, regime, int(seed))


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One strategy in one group."""

    group: Group
    strategy: str  # a strategy, or lora_random_<d> for draw d

    @property
    def name(self) -> str:
        return f"{self.group.name}/{self.strategy}"

    @property
    def family(self) -> str:
        return family(self.strategy)

    def key(self) -> dict[str, Any]:
        """The columns that identify the cell in every tidy table."""
        g = self.group
        return {
            "target": g.target,
            "regime": g.regime,
            "seed": g.seed,
            "strategy": self.strategy,
            "family": self.family,
        }


def expand(strategies: Iterable[str], random_draws: int) -> list[str]:
    """Cell strategy names: ``lora_random`` becomes ``lora_random_0`` .. ``lora_random_<draws - 1>``."""
    out: list[str] = []
    for s in strategies:
        out += [f"lora_random_{d}" for d in range(random_draws)] if s == "lora_random" else [s]
    return out


def draws_of(params: Any, group: Group, counts: dict[str, int] | None = None) -> int:
    """How many random-band cells a group has: `ski.random_draws`, or with 'all' the group's count in `counts`
    (group name -> the number of random bands its selection JSON lists)."""
    n = params.ski.random_draws
    if n != "all":
        return int(n)
    if counts is None or group.name not in counts:
        raise InputError(
            f"ski.random_draws = 'all': the number of random bands of {group.name} comes from its selection JSON; "
            "run `dvc repro select` first"
        )
    return counts[group.name]


def sources(study: Any) -> list[Source]:
    """Every source model of a params' `study` section, in study order."""
    return [Source(r, s) for r in study.regimes for s in study.seeds]


def groups(study: Any) -> list[Group]:
    """Every (target, regime, seed) group, in study order."""
    return [Group(t, r, s) for t in study.targets for r in study.regimes for s in study.seeds]


def strategy_names(params: Any, kinds: Iterable[str] = tuple(KINDS)) -> list[str]:
    """The strategy lists of `study` for the given stage kinds, in study order."""
    return [s for k in kinds for s in getattr(params.study, STUDY_LISTS[k])]


def cells(
    params: Any, kinds: Iterable[str] = tuple(KINDS), analysis_only: bool = False, counts: dict[str, int] | None = None
) -> list[Cell]:
    """Every cell of a params file, of the given stage kinds; `analysis_only` keeps the cells whose representations
    are saved (`analysis.strategies`); `counts`: see :func:`draws_of`."""
    names = strategy_names(params, kinds)
    keep = set(params.analysis.strategies)
    if analysis_only:
        names = [s for s in names if s in keep]
    out = []
    for g in groups(params.study):
        n = draws_of(params, g, counts) if "lora_random" in names else 0
        out += [Cell(g, s) for s in expand(names, n)]
    return out


def locate(roots: Sequence[Path | str], cell: Cell, suffix: str = "") -> Path:
    """The path ``<root>/<group>/<strategy><suffix>`` of a cell in whichever root holds it.

    suffix: "" (the cell's folder), ".json" (its metrics), "-layers.csv" (its per-layer diagnostics).
    """
    candidates = [Path(root) / cell.group.name / f"{cell.strategy}{suffix}" for root in roots]
    for path in candidates:
        if path.exists():
            return path
    raise InputError(
        f"cell {cell.name}: none of {[str(c) for c in candidates]} exists; "
        "run `dvc repro finetune finetune_peft` (the stages that write the cells) first"
    )
