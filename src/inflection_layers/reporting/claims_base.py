"""The pieces every claim is built from: the evidence bundle, one *part* (one comparison with its verdict and a
generated reason), and one claim row (its parts combined by :func:`inflection_layers.reporting.verdicts.combine`).

Seeds are the unit: a part's per-seed values go through :func:`inflection_layers.reporting.stats.seed_interval`
(t-interval), :func:`~inflection_layers.reporting.stats.detectable_effect` and the verdict rules of
:mod:`inflection_layers.reporting.verdicts`; equivalence parts through :func:`~inflection_layers.reporting.stats.equivalence_test`.
Every reason is a sentence generated from the part's own numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from inflection_layers.reporting import verdicts as V
from inflection_layers.reporting.paper import Paper
from inflection_layers.reporting.stats import detectable_effect, equivalence_test, seed_interval

CLAIM_COLUMNS = [
    "id",
    "target",
    "claim",
    "section",
    "source",
    "paper_value",
    "ours",
    "ci_low",
    "ci_high",
    "unit",
    "n_seeds",
    "test",
    "verdict",
    "verdict_code",
    "reason",
]
PART_COLUMNS = [
    "id",
    "target",
    "part",
    "test",
    "in_verdict",
    "ours",
    "ci_low",
    "ci_high",
    "unit",
    "n_seeds",
    "per_seed",
    "sd",
    "detectable_effect",
    "effect",
    "margin",
    "p",
    "paper_value",
    "verdict",
    "reason",
]
CODES = {V.REPRODUCED: 1.0, V.PARTIAL: 0.5, V.NOT_REPRODUCED: 0.0, V.INCONCLUSIVE: -1.0}


@dataclasses.dataclass
class Evidence:
    """Everything the claims read, as DataFrames (see :mod:`inflection_layers.report` for where each comes from).

    acc: per-seed accuracy (target, regime, seed, strategy, family, split, subset, n, accuracy), with a
    ``lora_random`` row per seed that is the mean over the draws; cells: one row per cell's metrics JSON;
    diagnose / layers: tidy per-layer tables of the source models and of the adaptations; selection: one row per
    group (target, regime, seed, band, complement, rgn, cka, random, scores); cka / probes: the analysis tables.
    """

    acc: pd.DataFrame
    cells: pd.DataFrame
    diagnose: pd.DataFrame
    layers: pd.DataFrame
    selection: pd.DataFrame
    cka: pd.DataFrame
    probes: pd.DataFrame
    paper: Paper
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


def sci(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _explain(verdict: str, test: str, low: float, high: float, mde: float, effect: float | None, n: int, show) -> str:
    """Why the rule gave this verdict, from the numbers (show: value -> display text)."""
    if n < 2:
        return "fewer than 2 seeds, so no interval: nothing can be decided"
    side = {"greater": "above", "less": "below"}.get(test, "")
    if verdict == V.REPRODUCED:
        return f"the interval lies {side} 0" if side else "the equivalence test holds within the margin"
    if verdict == V.NOT_REPRODUCED:
        if test in ("greater", "less") and ((test == "greater" and high < 0) or (test == "less" and low > 0)):
            return f"the interval lies {'below' if test == 'greater' else 'above'} 0: the opposite direction"
        if test in ("greater", "less"):
            return f"the interval excludes the claimed {show(effect)} and the study could detect {show(mde)}"
        return "the interval lies outside the equivalence margin"
    why = "the interval includes 0" if test in ("greater", "less") else "the interval is not inside the margin"
    if effect is not None and not math.isnan(mde) and mde > effect:
        why += f"; the smallest detectable effect ({show(mde)}) exceeds the claimed {show(effect)}"
    return why


def seed_part(
    pid: str,
    target: str,
    label: str,
    values: pd.Series | np.ndarray,
    test: str,
    ev: Evidence,
    *,
    effect: float | None = None,
    margin: float | None = None,
    margin_reason: str = "",
    scale: float = 100.0,
    unit: str = "points",
    log: bool = False,
    paper_value: str = "",
    in_verdict: bool = True,
) -> dict:
    """One statistical part over per-seed values (differences A - B, fractions of 1 or log ratios when `log`).

    test: 'greater' / 'less' (verdicts.greater / less with `effect`, None = direction only) or 'equivalent'
    (TOST within +-margin). Display: value * scale, or exp(value) as a ratio when `log`.
    """
    x = np.asarray(values, dtype=float).reshape(-1)
    x = x[np.isfinite(x)]
    rep = ev.rep
    show_raw = (
        (lambda v: "n/a" if v is None or not math.isfinite(v) else f"{math.exp(v):.3g}x")
        if log
        else (lambda v: "n/a" if v is None or not math.isfinite(v) else f"{scale * v:.2f} {unit}")
    )
    si = seed_interval(x, rep.confidence)
    mde = detectable_effect(si["sd"], si["n"], rep.alpha, rep.power)
    p = si["p"]
    if test == "equivalent":
        eq = equivalence_test(x, margin, rep.alpha)
        low, high, p = eq["low"], eq["high"], eq["p"]
        verdict = V.equivalent(p, low, high, margin, rep.alpha)
    else:
        low, high = si["low"], si["high"]
        verdict = V.RULES[test](low, high, mde, effect)
    conv = (lambda v: math.exp(v) if math.isfinite(v) else math.nan) if log else (lambda v: scale * v)
    interval = f" [{show_raw(low)}, {show_raw(high)}]" if si["n"] >= 2 else ""
    reason = f"{label}: mean {show_raw(si['mean'])}{interval} over {si['n']} seed(s); " + _explain(
        verdict, test, low, high, mde, effect, si["n"], show_raw
    )
    if margin is not None:
        reason += f" (margin {show_raw(margin)}: {margin_reason})" if margin_reason else f" (margin {show_raw(margin)})"
    return {
        "id": pid,
        "target": target,
        "part": label,
        "test": test + (" (log ratio)" if log else ""),
        "in_verdict": in_verdict,
        "ours": conv(si["mean"]),
        "ci_low": conv(low),
        "ci_high": conv(high),
        "unit": "ratio" if log else unit,
        "n_seeds": si["n"],
        "per_seed": ";".join(fmt(conv(v), 4, False) for v in x),
        "sd": si["sd"],
        "detectable_effect": mde,
        "effect": effect,
        "margin": margin,
        "p": p,
        "paper_value": paper_value,
        "verdict": verdict,
        "reason": reason + ".",
    }


def category_part(
    pid: str,
    target: str,
    label: str,
    observed: list,
    expected: Any,
    *,
    shown: list | None = None,
    expected_text: str = "",
    paper_value: str = "",
    in_verdict: bool = True,
) -> dict:
    """One categorical part (verdicts.categorical): each observed cell against the expected value."""
    verdict = V.categorical(observed, expected)
    cells = [o for o in observed if o is not None]
    k = sum(V._same(o, expected) for o in cells)
    seen = ", ".join(str(s) for s in (shown if shown is not None else observed))
    what = "hold" if expected is True and not expected_text else f"match {expected_text or expected}"
    reason = (
        f"{label}: {k} of {len(cells)} cell(s) {what} (observed: {seen})" if cells else f"{label}: no cell to observe"
    )
    return {
        "id": pid,
        "target": target,
        "part": label,
        "test": "categorical",
        "in_verdict": in_verdict,
        "ours": k / len(cells) if cells else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "unit": "share of cells",
        "n_seeds": len(cells),
        "per_seed": seen,
        "sd": math.nan,
        "detectable_effect": math.nan,
        "effect": None,
        "margin": None,
        "p": math.nan,
        "paper_value": paper_value,
        "verdict": verdict,
        "reason": reason + ".",
    }


def missing_part(pid: str, target: str, label: str, why: str) -> dict:
    """A part whose inputs this profile lacks: Inconclusive, with the reason."""
    return {
        "id": pid,
        "target": target,
        "part": label,
        "test": "n/a",
        "in_verdict": True,
        "ours": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "unit": "",
        "n_seeds": 0,
        "per_seed": "",
        "sd": math.nan,
        "detectable_effect": math.nan,
        "effect": None,
        "margin": None,
        "p": math.nan,
        "paper_value": "",
        "verdict": V.INCONCLUSIVE,
        "reason": f"{label}: {why}.",
    }


def claim_row(
    pid: str, target: str, text: str, section: str, paper_value: str, parts: list[dict], source: str = "paper"
) -> dict:
    """The claim's row: verdict = combine(parts in the verdict); ours/interval from its first part (the headline)."""
    counted = [p for p in parts if p["in_verdict"]]
    verdict = V.combine([p["verdict"] for p in counted])
    head = parts[0] if parts else None
    tally = ", ".join(
        f"{sum(p['verdict'] == v for p in counted)} {v.lower()}"
        for v in V.VERDICTS
        if any(p["verdict"] == v for p in counted)
    )
    reason = (
        f"{len(counted)} part(s): {tally}. Headline, {head['reason']}"
        if head and counted
        else head["reason"]
        if head
        else "no evidence in this profile."
    )
    return {
        "id": pid,
        "target": target,
        "claim": text,
        "section": section,
        "source": source,
        "paper_value": paper_value,
        "ours": head["ours"] if head else math.nan,
        "ci_low": head["ci_low"] if head else math.nan,
        "ci_high": head["ci_high"] if head else math.nan,
        "unit": head["unit"] if head else "",
        "n_seeds": head["n_seeds"] if head else 0,
        "test": head["test"] if head else "n/a",
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
