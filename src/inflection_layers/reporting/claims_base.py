"""The pieces every claim is built from: the evidence, one *part* (one statistic per seed, judged by its rule in
the decision table) and one claim row (its parts combined as the table says).

Seeds are the unit: a part's per-seed values go through :func:`inflection_layers.reporting.stats.seed_interval` (a
t-interval at the report's `confidence`; equivalence and non-inferiority at 1 - 2 alpha, as TOST) and the rule of
:mod:`inflection_layers.reporting.verdicts` with the numbers :mod:`~inflection_layers.reporting.decisions` resolves.
Roles: ``primary`` parts decide a paper claim (the paper's own strategies and regimes), ``extension`` parts are our
additions (shown as rows of their own, never deciding a paper claim), ``context`` parts are shown without a verdict.
Every reason is a sentence generated from the part's own numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from inflection_layers.cells import REGIMES as REGIMES
from inflection_layers.reporting import verdicts as V
from inflection_layers.reporting.decisions import Decision, lookup, resolve
from inflection_layers.reporting.paper import Paper
from inflection_layers.reporting.stats import seed_interval

SEL = "lora_selective"  # the SKI band's LoRA cell
PAPER_STRATEGIES = ("shallow", "full", SEL, "lora_all")  # the paper's four strategies

CLAIM_COLUMNS = [
    "id",
    "role",
    "target",
    "claim",
    "section",
    "source",
    "profile",
    "statistic",
    "rule",
    "effect",
    "paper_value",
    "ours",
    "ci_low",
    "ci_high",
    "level",
    "unit",
    "n_seeds",
    "test",
    "verdict",
    "verdict_code",
    "reason",
]
PART_COLUMNS = [
    "id",
    "role",
    "target",
    "part",
    "label",
    "rule",
    "direction",
    "effect",
    "region_low",
    "region_high",
    "margin",
    "effect_source",
    "level",
    "ours",
    "ci_low",
    "ci_high",
    "unit",
    "n_seeds",
    "per_seed",
    "sd",
    "verdict",
    "reason",
    "paper_value",
]
CODES = {V.REPRODUCED: 1.0, V.PARTIAL: 0.5, V.NOT_REPRODUCED: 0.0, V.INCONCLUSIVE: -1.0}


@dataclasses.dataclass
class Evidence:
    """Everything the claims read (report.py's ReportInputs gives each): per-seed accuracy (acc: target, regime, seed,
    strategy, family, split, subset, n, accuracy; a ``lora_random`` row per seed is the mean over the draws); cells: one
    row per cell's metrics; diagnose, heads, layers: tidy per-layer (and per-head) tables of the source models and of
    the adaptations; curves: the adaptation curves; selection: one row per group; intervene, cka, probes, features: the
    analysis tables; the paper's numbers, the decision table, params, and the model's depth and width."""

    acc: pd.DataFrame
    cells: pd.DataFrame
    diagnose: pd.DataFrame
    heads: pd.DataFrame
    layers: pd.DataFrame
    curves: pd.DataFrame
    selection: pd.DataFrame
    intervene: pd.DataFrame
    cka: pd.DataFrame
    probes: pd.DataFrame
    features: pd.DataFrame
    paper: Paper
    decisions: pd.DataFrame
    params: Any
    num_layers: int | None
    width: int | None

    @property
    def rep(self) -> Any:
        return self.params.report


def fmt(x: float | None, digits: int = 2, signed: bool = True) -> str:
    """A number as text ('+1.23', 'n/a' for None/nan)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _display(unit: str) -> tuple[Any, str]:
    """(how a stored value is shown, the shown unit): accuracy fractions as points, log ratios as ratios."""
    if unit == "points":
        return (lambda v: 100 * v), "points"
    if unit == "log ratio":
        return (lambda v: math.exp(v) if math.isfinite(v) else math.nan), "ratio"
    return (lambda v: v), unit


def _interval(x: np.ndarray, d: Decision, rep: Any) -> tuple[float, float, float]:
    """(low, high, level) of a part's interval: TOST's 1 - 2 alpha for equivalence and non-inferiority, else
    `confidence`."""
    level = 1 - 2 * rep.alpha if d.rule in ("equivalence", "noninferiority") else rep.confidence
    si = seed_interval(x, level)
    return si["low"], si["high"], level


def judge(d: Decision, low: float, high: float, mean: float) -> str:
    """The verdict of a part's interval under its decision."""
    if d.rule == "directional":
        return V.directional(low, high, d.effect, d.direction, mean)
    if d.rule == "two_sided":
        return V.two_sided(low, high, d.region, d.direction)
    if d.rule == "equivalence":
        return V.equivalence(low, high, d.margin)
    return V.noninferiority(low, high, d.margin)


def explain(d: Decision, verdict: str, show: Any, n: int) -> str:
    """Why the rule gave this verdict, in words."""
    if n < 2:
        return "fewer than 2 seeds, so no interval: nothing can be decided"
    side = {"negative": "below 0 (the claimed decrease)", "either": "away from 0"}.get(d.direction, "above 0")
    effect = show(d.effect if d.direction != "negative" else -d.effect) if d.effect else "n/a"
    claims = {
        "directional": f"the claimed direction with an effect of {effect}",
        "two_sided": f"a size within [{fmt(d.region[0], 3, False)}, {fmt(d.region[1], 3, False)}] on the claimed side"
        if d.region
        else "",
        "equivalence": f"equivalence within +-{fmt(d.margin, 4, False)}",
        "noninferiority": f"non-inferiority by {fmt(d.margin, 4, False)}",
    }[d.rule]
    outcome = {
        V.REPRODUCED: "the interval supports",
        V.PARTIAL: f"the interval lies {side} but misses",
        V.NOT_REPRODUCED: "the interval excludes",
        V.INCONCLUSIVE: "the interval neither supports nor excludes",
    }[verdict]
    return f"{outcome} {claims} ({d.source})"


def _seed_summary(si: dict, low: float, high: float, level: float, conv: Callable, shown: str) -> str:
    """'mean +0.53 points [-0.97, +2.03] (95% interval) over 3 seed(s)', naming an interval without width (every
    seed the same value: seed_interval's sd is exactly 0 then)."""
    if si["n"] < 2:
        return f"mean {fmt(conv(si['mean']), 3)} {shown} over {si['n']} seed(s)"
    tie = " (every seed gave the same value: the interval has no width)" if si["sd"] == 0 else ""
    interval = f"[{fmt(conv(low), 3)}, {fmt(conv(high), 3)}] ({100 * level:g}% interval){tie}"
    return f"mean {fmt(conv(si['mean']), 3)} {shown} {interval} over {si['n']} seed(s)"


def part(
    ev: Evidence,
    pid: str,
    role: str,
    key: str,
    target: str,
    label: str,
    values: pd.Series | np.ndarray,
    *,
    unit: str = "points",
    regime: str | None = None,
    paper_value: str = "",
) -> dict:
    """One statistical part: per-seed values (accuracy differences as fractions, log ratios, ...), judged by its
    rule."""
    d = resolve(lookup(ev.decisions, pid, role, key), ev.paper, ev.params, regime)
    x = np.asarray(values, dtype=float).reshape(-1)
    x = x[np.isfinite(x)]
    si = seed_interval(x, ev.rep.confidence)
    low, high, level = _interval(x, d, ev.rep)
    verdict = judge(d, low, high, si["mean"]) if si["n"] >= 2 else V.INCONCLUSIVE
    conv, shown = _display(unit)
    reason = f"{label}: {_seed_summary(si, low, high, level, conv, shown)}; " + explain(d, verdict, conv, si["n"])
    return {
        "id": pid,
        "role": role,
        "target": target,
        "part": key,
        "label": label,
        "rule": d.rule,
        "direction": d.direction,
        "effect": d.effect,
        "region_low": d.region[0] if d.region else None,
        "region_high": d.region[1] if d.region else None,
        "margin": d.margin,
        "effect_source": d.source,
        "level": level,
        "ours": conv(si["mean"]),
        "ci_low": conv(low),
        "ci_high": conv(high),
        "unit": shown,
        "n_seeds": si["n"],
        "per_seed": ";".join(fmt(conv(v), 4, False) for v in x),
        "sd": si["sd"],
        "verdict": verdict,
        "reason": reason + ".",
        "paper_value": paper_value,
    }


def category_part(
    ev: Evidence,
    pid: str,
    role: str,
    key: str,
    target: str,
    label: str,
    observed: list,
    expected: Any,
    *,
    shown: list | None = None,
    expected_text: str = "",
    paper_value: str = "",
) -> dict:
    """One categorical part: each observed cell against the expected value."""
    lookup(ev.decisions, pid, role, key)  # the part must be in the decision table
    verdict = V.categorical(observed, expected)
    cells = [o for o in observed if o is not None]
    k = sum(V._same(o, expected) for o in cells)
    seen = ", ".join(str(s) for s in (shown if shown is not None else observed))
    what = "hold" if expected is True and not expected_text else f"match {expected_text or expected}"
    reason = (
        f"{label}: {k} of {len(cells)} cell(s) {what} (observed: {seen})" if cells else f"{label}: no cell to observe"
    )
    return {
        **_empty(pid, role, target, key, label),
        "rule": "categorical",
        "ours": k / len(cells) if cells else math.nan,
        "unit": "share of cells",
        "n_seeds": len(cells),
        "per_seed": seen,
        "verdict": verdict,
        "reason": reason + ".",
        "paper_value": paper_value,
    }


def context_part(pid: str, target: str, label: str, text: str, value: float = math.nan, unit: str = "") -> dict:
    """A part shown for context, without a verdict (a rank, a trend, a sensitivity row)."""
    return {
        **_empty(pid, "context", target, label, label),
        "ours": value,
        "unit": unit,
        "verdict": "",
        "reason": f"{label}: {text}.",
    }


def missing_part(ev: Evidence, pid: str, role: str, key: str, target: str, label: str, why: str) -> dict:
    """A part whose inputs this profile lacks: Inconclusive, with the reason."""
    rule = lookup(ev.decisions, pid, role, key)["rule"]
    return {
        **_empty(pid, role, target, key, label),
        "rule": rule,
        "verdict": V.INCONCLUSIVE,
        "reason": f"{label}: {why}.",
    }


def _empty(pid: str, role: str, target: str, key: str, label: str) -> dict:
    return dict.fromkeys(PART_COLUMNS) | {
        "id": pid,
        "role": role,
        "target": target,
        "part": key,
        "label": label,
        "ours": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_seeds": 0,
        "per_seed": "",
        "sd": math.nan,
        "paper_value": "",
    }


def _tally(counted: list[dict]) -> str:
    """The parts' verdicts counted, in the verdicts' order ('2 reproduced, 1 inconclusive')."""
    return ", ".join(
        f"{sum(p['verdict'] == v for p in counted)} {v.lower()}"
        for v in V.VERDICTS
        if any(p["verdict"] == v for p in counted)
    )


def _field(head: dict | None, key: str, default: Any = math.nan) -> Any:
    """The deciding part's value of a key, else the default (no deciding part, or no value)."""
    return head[key] if head and head[key] is not None else default


def claim_row(
    ev: Evidence,
    pid: str,
    role: str,
    target: str,
    text: str,
    section: str,
    paper_value: str,
    parts: list[dict],
    source: str = "paper",
) -> dict:
    """The claim's row: its parts of this role combined as the decision table says; the deciding part's interval."""
    counted = [p for p in parts if p["role"] == role and p["verdict"] in V.VERDICTS]
    how = ev.decisions[(ev.decisions["id"] == pid) & (ev.decisions["role"] == role)]["combine"].iloc[0]
    verdict = V.combine([p["verdict"] for p in counted], "all" if how == "single" and len(counted) != 1 else how)
    head = counted[V.deciding([p["verdict"] for p in counted], how if how != "single" else "all")] if counted else None
    rule = {"all": "every part must hold", "any": "any part may hold", "single": "one part"}[how]
    reason = (
        f"{len(counted)} part(s), {rule}: {_tally(counted)}. Deciding part: {head['reason']}"
        if head
        else "no evidence in this profile."
    )
    return {
        "id": pid,
        "role": role,
        "target": target,
        "claim": text,
        "section": section,
        "source": source,
        "profile": ev.params.study.profile,
        "statistic": _field(head, "label", ""),
        "rule": _field(head, "rule", ""),
        "effect": _field(head, "effect_source", ""),
        "paper_value": paper_value,
        "ours": _field(head, "ours"),
        "ci_low": _field(head, "ci_low"),
        "ci_high": _field(head, "ci_high"),
        "level": _field(head, "level"),
        "unit": _field(head, "unit", ""),
        "n_seeds": _field(head, "n_seeds", 0),
        "test": rule,
        "verdict": verdict,
        "verdict_code": CODES[verdict],
        "reason": reason,
    }


def per_seed(df: pd.DataFrame, value: str = "accuracy") -> pd.Series:
    """A (seed -> value) Series of a frame with one row per seed."""
    return df.groupby("seed")[value].mean()


def paired(a: pd.Series, b: pd.Series) -> pd.Series:
    """a - b over the seeds present in both (seed-indexed Series)."""
    common = a.index.intersection(b.index)
    return (a.loc[common] - b.loc[common]).sort_index()


def primary(acc: pd.DataFrame, target: str) -> pd.DataFrame:
    """The accuracies a claim about a target reads: its first evaluation split (validation), all sentences."""
    d = acc[(acc["target"] == target) & (acc["subset"] == "all")]
    if d.empty:
        return d
    split = "validation" if (d["split"] == "validation").any() else d["split"].iloc[0]
    return d[d["split"] == split]


def arm(acc: pd.DataFrame, regime: str, strategy: str) -> pd.Series:
    return per_seed(acc[(acc["regime"] == regime) & (acc["strategy"] == strategy)])


def has(acc: pd.DataFrame, strategy: str, regimes: tuple[str, ...] = ("under", "over")) -> bool:
    return all(((acc["regime"] == r) & (acc["strategy"] == strategy)).any() for r in regimes)
