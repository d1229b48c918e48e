"""The decision table (data/paper/decisions.csv), fixed before the data: for every part of every claim, its rule, the
direction it claims, where its effect or margin comes from, and how its claim's parts combine.

An effect source is ``stated:<what>`` (the paper's own numbers in stated.csv), ``params:<key>`` (a smallest effect
of interest of ours, with its reason in conf/config.yaml) or ``exact`` (a categorical claim). :func:`resolve`
turns a row into the numbers a rule needs: d for a directional claim, the region [a, b] of a two-sided one (the
paper's "about d": [d / about, d * about], or on a log scale d -/+ log(about)), the margin of an equivalence or a
non-inferiority. Where the paper's own numbers point against its words (P4), the stated difference is not used and
the reason says so.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from inflection_layers.artifacts import read_csv
from inflection_layers.reporting.paper import Paper
from inflection_layers.reporting.verdicts import DIRECTIONS, RULES, about

COLUMNS = ["id", "role", "part", "statistic", "scale", "rule", "direction", "effect", "combine", "why"]
ROLES = ("primary", "extension")


@dataclasses.dataclass(frozen=True)
class Decision:
    """One part's rule with its numbers resolved."""

    id: str
    role: str
    part: str
    rule: str
    direction: str
    combine: str
    effect: float | None  # d of a directional claim (> 0, on the claimed side)
    region: tuple[float, float] | None  # [a, b] of a two-sided claim, on the claimed side
    margin: float | None  # of an equivalence or a non-inferiority claim
    source: str  # where the number comes from, as a sentence
    scale: str


def read_decisions(path: str | Path) -> pd.DataFrame:
    """The decision table, checked: known rules, directions, roles and combinations; one combination per claim."""
    df = read_csv(path, COLUMNS).fillna("")
    bad = df[
        ~df["rule"].isin(RULES)
        | ~df["direction"].isin(DIRECTIONS)
        | ~df["role"].isin(ROLES)
        | ~df["combine"].isin(["all", "any", "single"])
    ]
    if len(bad):
        raise ValueError(f"{path}: unknown rule, direction, role or combination in rows {bad.index.tolist()}")
    if (df.groupby(["id", "role"])["combine"].nunique() > 1).any() or df.duplicated(["id", "role", "part"]).any():
        raise ValueError(f"{path}: a claim with two combinations, or a part listed twice")
    return df


def _param(params: Any, key: str) -> float:
    node = params
    for part in key.split("."):
        node = getattr(node, part)
    return float(node)


def _stated(paper: Paper, spec: list[str], regime: str | None) -> tuple[float | tuple[float, float], str]:
    """A stated number: accuracy_gap, diff:<r>/<s>:<r>/<s>, std:<r>/<s>:<r>/<s>, ratio:<kind>:<strategy>, probe_gap,
    cka_range:<kind>:<strategy> (a range, or one value), with a sentence saying where it comes from."""
    kind = spec[0]
    if kind == "accuracy_gap":
        return paper.gap(), f"stated.csv accuracy_gap ({100 * paper.gap():.2f} points)"
    if kind in ("diff", "std"):
        (ra, sa), (rb, sb) = (x.split("/") for x in spec[1:3])
        if kind == "diff":
            d = paper.accuracy_difference(ra, sa, rb, sb)
            return d, f"the paper's {ra} {sa} - {rb} {sb} = {100 * d:+.2f} points"
        std = max(paper.accuracy(ra, sa)[1] or 0.0, paper.accuracy(rb, sb)[1] or 0.0)
        return std, f"the paper's own seed std of {ra} {sa} and {rb} {sb} ({100 * std:.2f} points)"
    if kind == "ratio":
        o, u = paper.grad_mean(spec[1], "over", spec[2]), paper.grad_mean(spec[1], "under", spec[2])
        return math.log(o / u), f"the paper's {spec[1]} {spec[2]}: {o:g} / {u:g} = {o / u:.3g}x"
    if kind == "probe_gap":
        (_, over), (_, under) = paper.probe_peak("over"), paper.probe_peak("under")
        return over - under, f"the paper's peak probe accuracy OVER - UNDER ({100 * (over - under):+.1f} points)"
    if kind == "cka_range":
        lo, hi = paper.cka_range(spec[1], regime or "over", spec[2])
        return (
            (lo, hi),
            f"stated.csv {spec[1]} {spec[2]} ({lo:g}-{hi:g})"
            if lo != hi
            else f"stated.csv {spec[1]} {spec[2]} (about {lo:g})",
        )
    raise ValueError(f"unknown stated effect {':'.join(spec)!r}")


def _copied(row: pd.Series | dict) -> dict:
    """The fields a Decision takes from its row as they are."""
    return {k: row[k] for k in ("id", "role", "part", "rule", "direction", "combine", "scale")}


def resolve(row: pd.Series | dict, paper: Paper, params: Any, regime: str | None = None) -> Decision:
    """The numbers of one decision row: d, the two-sided region or the margin, and where they come from."""
    rule, direction, source = row["rule"], row["direction"], str(row["effect"])
    base = _copied(row)
    if rule == "categorical":
        return Decision(**base, effect=None, region=None, margin=None, source="exact (a category)")
    origin, _, rest = source.partition(":")
    if origin == "params":
        value, why = _param(params, rest), f"our smallest effect of interest {rest} = {_param(params, rest):g}"
    elif origin == "stated":
        value, why = _stated(paper, rest.split(":"), regime)
    else:
        raise ValueError(f"{row['id']} {row['part']}: unknown effect source {source!r}")
    factor, log = params.report.about, "log" in row["scale"]
    if rule == "equivalence":
        margin = math.log(value) if rest == "report.about" else float(value)
        return Decision(**base, effect=None, region=None, margin=margin, source=why)
    if rule == "noninferiority":
        return Decision(**base, effect=None, region=None, margin=float(value), source=why)
    if isinstance(value, tuple):  # a stated range is the region itself
        return Decision(
            **base,
            effect=None,
            region=value if value[0] < value[1] else about(value[0], factor),
            margin=None,
            source=why,
        )
    magnitude = abs(float(value))
    if rule == "two_sided":
        region = (
            (max(magnitude - math.log(factor), 1e-12), magnitude + math.log(factor))
            if log
            else about(magnitude, factor)
        )
        return Decision(**base, effect=magnitude, region=region, margin=None, source=why)
    if origin == "stated" and (value <= 0 if direction == "positive" else value >= 0):
        fallback = params.report.sesoi.accuracy
        why += (
            ": the paper's own numbers point the other way, so the effect is our smallest of interest "
            f"({100 * fallback:g} points)"
        )
        magnitude = fallback
    return Decision(**base, effect=magnitude, region=None, margin=None, source=why)


def lookup(table: pd.DataFrame, pid: str, role: str, part: str) -> pd.Series:
    """The decision row of a part; a part missing from the table is an error (the table must be complete)."""
    rows = table[(table["id"] == pid) & (table["role"] == role) & (table["part"] == part)]
    if len(rows) != 1:
        raise KeyError(f"data/paper/decisions.csv has no row for claim {pid}, role {role}, part {part!r}")
    return rows.iloc[0]
