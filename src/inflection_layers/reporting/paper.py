"""What arXiv 2511.00797 states, read from ``data/paper/stated.csv``: the only place the paper's numbers live.

Accessors return fractions of 1 for accuracies (the file holds percent and points) and ``None`` where the
paper states nothing. Beside them: the exact parameter arithmetic of bert-base-uncased (the paper's model;
its architecture, not a result of the paper) and the map from the paper's layer index to a model of
another depth, by relative depth.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from inflection_layers.artifacts import read_csv

# bert-base-uncased's architecture (its config.json): the model the paper's counts and layer indices refer to.
BERT_BASE = {
    "layers": 12,
    "width": 768,
    "intermediate": 3072,
    "vocab": 30522,
    "positions": 512,
    "types": 2,
    "labels": 2,
}
PAPER_TARGET = "rt"  # the paper adapts to Rotten Tomatoes only: its accuracies are compared on this target
COLUMNS = ["kind", "regime", "strategy", "layer", "value", "std", "unit", "section", "note"]


def _num(x: object) -> float | None:
    """A cell of stated.csv as a float, None when empty or not a single number."""
    try:
        v = float(str(x).strip())
    except ValueError:
        return None
    return None if math.isnan(v) else v


def _scale(unit: str) -> float:
    """Divide by this to get a fraction of 1: percent and accuracy points are hundredths."""
    return 100.0 if str(unit).strip() in ("%", "points") else 1.0


class Paper:
    """The rows of stated.csv, with one accessor per kind of number the report compares."""

    def __init__(self, df: pd.DataFrame) -> None:
        missing = set(COLUMNS) - set(df.columns)
        if missing:
            raise ValueError(f"stated.csv lacks the columns {sorted(missing)}")
        self.df = df.astype(str).replace({"nan": "", "None": ""})
        self._cache: dict[tuple, pd.DataFrame] = {}

    @classmethod
    def read(cls, path: str | Path) -> Paper:
        return cls(read_csv(path, COLUMNS).fillna(""))

    def rows(self, kind: str, regime: str | None = None, strategy: str | None = None) -> pd.DataFrame:
        key = (kind, regime, strategy)
        if key not in self._cache:
            self._cache[key] = self._rows(kind, regime, strategy)
        return self._cache[key]

    def _rows(self, kind: str, regime: str | None, strategy: str | None) -> pd.DataFrame:
        d = self.df[self.df["kind"] == kind]
        if regime is not None:
            d = d[d["regime"] == regime]
        if strategy is not None:
            d = d[d["strategy"] == strategy]
        return d

    def _one(self, kind: str, regime: str | None = None, strategy: str | None = None) -> pd.Series | None:
        d = self.rows(kind, regime, strategy)
        return d.iloc[0] if len(d) else None

    def value(self, kind: str, regime: str | None = None, strategy: str | None = None) -> float | None:
        """The numeric `value` of one row, scaled to a fraction of 1 where its unit is % or points."""
        r = self._one(kind, regime, strategy)
        v = None if r is None else _num(r["value"])
        return None if v is None else v / _scale(r["unit"])

    def note(self, kind: str, regime: str | None = None, strategy: str | None = None) -> str:
        r = self._one(kind, regime, strategy)
        return "" if r is None else str(r["note"])

    def section(self, kind: str, regime: str | None = None, strategy: str | None = None) -> str:
        r = self._one(kind, regime, strategy)
        return "" if r is None else str(r["section"])

    def accuracy(self, regime: str, strategy: str) -> tuple[float | None, float | None]:
        """(mean, std) over the paper's seeds as fractions of 1; (None, None) where the paper gives no row."""
        r = self._one("accuracy", regime, strategy)
        if r is None:
            return None, None
        mean, std = _num(r["value"]), _num(r["std"])
        s = _scale(r["unit"])
        return (None if mean is None else mean / s), (None if std is None else std / s)

    def accuracy_rows(self) -> pd.DataFrame:
        """regime, strategy, mean, std (fractions) of every accuracy the paper states."""
        out = [
            {"regime": r.regime, "strategy": r.strategy, "mean": m, "std": s}
            for r in self.rows("accuracy").itertuples()
            for m, s in [self.accuracy(r.regime, r.strategy)]
        ]
        return pd.DataFrame(out, columns=["regime", "strategy", "mean", "std"])

    def accuracy_difference(self, regime_a: str, strategy_a: str, regime_b: str, strategy_b: str) -> float | None:
        """The paper's A - B from its stated accuracies (fraction of 1), None where either is not stated."""
        a, b = self.accuracy(regime_a, strategy_a)[0], self.accuracy(regime_b, strategy_b)[0]
        return None if a is None or b is None else a - b

    def smallest_interpreted_difference(self) -> float | None:
        """The smallest positive gap between OVER selective LoRA and another OVER row: the finest difference the
        paper reads as a finding (its section 7 ranks the methods by it)."""
        gaps = [
            self.accuracy_difference("over", "lora_selective", r.regime, r.strategy)
            for r in self.rows("accuracy", "over").itertuples()
            if r.strategy != "lora_selective"
        ]
        gaps = [round(g, 10) for g in gaps if g is not None and g > 0]
        return min(gaps) if gaps else None

    def gap(self) -> float | None:
        """The OVER - UNDER accuracy gap the paper states for all settings (fraction of 1)."""
        return self.value("accuracy_gap")

    def stated_parameters(self, strategy: str) -> int | None:
        v = self.value("trainable_parameters_stated", strategy=strategy)
        return None if v is None else int(v)

    def band(self) -> list[int] | None:
        r = self._one("ski_band")
        return None if r is None or not r["layer"] else [int(x) for x in re.findall(r"-?\d+", r["layer"])]

    def entropy_min_layer(self) -> int | None:
        r = self._one("entropy_min_layer")
        return None if r is None or not r["layer"] else int(float(r["layer"]))

    def entropy_range(self) -> tuple[float, float] | None:
        """The range of the minimum entropy 'across settings', as the note of the entropy_min_layer row gives it."""
        m = re.search(r"(\d+(?:\.\d+)?)\s*(?:to|-)\s*(\d+(?:\.\d+)?)", self.note("entropy_min_layer"))
        return (float(m.group(1)), float(m.group(2))) if m else None

    def greedy_threshold(self) -> float | None:
        return self.value("greedy_threshold")

    def greedy_s(self) -> int | None:
        """The widening s of the greedy rule, as the note of the greedy_threshold row gives it ('s = 1')."""
        m = re.search(r"\bs\s*=\s*(\d+)", self.note("greedy_threshold"))
        return int(m.group(1)) if m else None

    def inflection_layers(self) -> list[int] | None:
        """The paper's inflection layers: the longest contiguous run of its band (ties: the run holding the entropy
        minimum)."""
        band = self.band()
        if not band:
            layer = self.entropy_min_layer()
            return None if layer is None else [layer]
        runs, run = [], [band[0]]
        for x in band[1:]:
            run = [*run, x] if x == run[-1] + 1 else (runs.append(run) or [x])
        runs.append(run)
        m = self.entropy_min_layer()
        return max(runs, key=lambda r: (len(r), m in r))

    def probe_peak(self, regime: str) -> tuple[int, float] | None:
        """(layer, accuracy as a fraction) of the paper's peak probe accuracy of a regime."""
        r = self._one("probe_peak", regime)
        if r is None or _num(r["value"]) is None or not r["layer"]:
            return None
        return int(float(r["layer"])), _num(r["value"]) / _scale(r["unit"])

    def probe_strategy(self) -> str | None:
        r = self._one("probe_peak")
        return None if r is None or not r["strategy"] else r["strategy"]

    def cka_range(self, kind: str, regime: str, strategy: str) -> tuple[float, float] | None:
        """(low, high) of a Delta-CKA value or range as stated.csv writes it ('a-b' or 'a'); regime 'both' rows match
        any regime."""
        d = self.rows(kind, strategy=strategy)
        d = d[d["regime"].isin([regime, "both"])]
        if d.empty:
            return None
        xs = [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", d.iloc[0]["value"])]
        return (min(xs), max(xs)) if xs else None

    def grad_mean(self, kind: str, regime: str, strategy: str) -> float | None:
        """A stated mean gradient norm (kind 'act_grad_mean' or 'param_grad_mean')."""
        return self.value(kind, regime, strategy)


def paper_layers(layer: int, depth: int, paper_depth: int = BERT_BASE["layers"]) -> list[int]:
    """The layers of a `depth`-layer model at the relative depth of the paper's `layer` (of `paper_depth`): those
    whose span [i/depth, (i+1)/depth) overlaps the paper layer's [layer/paper_depth, (layer+1)/paper_depth).
    Identity when depth == paper_depth; layer 5 of 12 is layer 2 of 6 and layers 10, 11 of 24."""
    if depth < 1 or not 0 <= layer < paper_depth:
        raise ValueError(f"layer {layer} of {paper_depth} cannot be mapped to depth {depth}")
    lo, hi = layer * depth / paper_depth, (layer + 1) * depth / paper_depth
    return list(range(math.floor(lo), max(math.floor(lo) + 1, math.ceil(hi))))


def map_band(band: list[int], depth: int, paper_depth: int = BERT_BASE["layers"]) -> list[int]:
    """The paper's band at our depth: the union of :func:`paper_layers` of its layers."""
    return sorted({x for layer in band for x in paper_layers(layer, depth, paper_depth)})


def encoder_layer_parameters(width: int, intermediate: int) -> int:
    """One BERT encoder layer: q, k, v, o (with biases), two LayerNorms, the feed-forward in and out."""
    return (
        4 * (width * width + width)
        + 2 * (2 * width)
        + (width * intermediate + intermediate)
        + (intermediate * width + width)
    )


def classifier_parameters(width: int, labels: int) -> int:
    return width * labels + labels


def lora_parameters(rank: int, width: int, layers: int, targets: int = 3) -> int:
    """LoRA on `targets` (width x width) projections of `layers` layers: A (rank x width) + B (width x rank) each."""
    for name, v in (("rank", rank), ("width", width), ("layers", layers), ("targets", targets)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    return targets * 2 * rank * width * layers


def bert_base_parameters(
    strategy: str,
    rank: int,
    targets: int,
    shallow_k: int,
    band: list[int] | None = None,
    pooler: bool = True,
    config: dict | None = None,
) -> int | None:
    """Exact trainable parameters of a strategy on bert-base-uncased (BertForSequenceClassification); None if unknown.

    shallow: top `shallow_k` layers + classifier (+ the pooler when `pooler`); lora_selective: LoRA on `band`;
    lora_all: LoRA on every layer; both with the classifier.
    """
    c = config or BERT_BASE
    d, L = c["width"], c["layers"]
    head = classifier_parameters(d, c["labels"])
    pool = d * d + d
    if strategy == "full":
        emb = (c["vocab"] + c["positions"] + c["types"]) * d + 2 * d
        return emb + L * encoder_layer_parameters(d, c["intermediate"]) + pool + head
    if strategy == "shallow":
        return shallow_k * encoder_layer_parameters(d, c["intermediate"]) + head + (pool if pooler else 0)
    if strategy == "head":
        return head
    if strategy == "lora_all":
        return lora_parameters(rank, d, L, targets) + head
    if strategy == "lora_selective" and band:
        return lora_parameters(rank, d, len(band), targets) + head
    return None


def setup(paper: Paper) -> dict[str, object]:
    """The paper's stated setup: params key (the `note` of each `setup` row) -> its value, parsed as YAML."""
    import yaml

    return {str(r["note"]): yaml.safe_load(str(r["value"])) for _, r in paper.rows("setup").iterrows()}
