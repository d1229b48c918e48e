"""The paper's layer-wise claims P5-P7, one function each, pure over the Evidence DataFrames, and the helpers they
share with P8-P10 (:mod:`~inflection_layers.reporting.claims_depth`).

Layers are the encoder's 0 .. L-1 (the embeddings, -1, are left out). The paper's layer indices are for
bert-base (12 layers); for a model of another depth they are compared at the same relative depth
(:func:`inflection_layers.reporting.paper.paper_layers`). The paper's *inflection layers* are the contiguous
run of its band ({4, 5, 6}, :meth:`~inflection_layers.reporting.paper.Paper.inflection_layers`); *upper
layers* are those above them. Every part's rule and effect come from the decision table (its "about x" factor
is `report.about`).
"""

from __future__ import annotations

import itertools
import math

import pandas as pd

from inflection_layers.reporting.claims_base import (
    PAPER_STRATEGIES,
    REGIMES,
    Evidence,
    category_part,
    claim_row,
    context_part,
    missing_part,
    part,
)
from inflection_layers.reporting.paper import map_band


def of_target(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """The rows of one target (an empty frame as it is)."""
    return df[df["target"] == target] if len(df) else df


def depth_of(ev: Evidence, diag: pd.DataFrame) -> int:
    """The encoder's depth: the Evidence's, else one more than the deepest diagnosed layer (0 without any)."""
    return ev.num_layers or (int(diag["layer"].max()) + 1 if len(diag) else 0)


def grid(tidy: pd.DataFrame, metric: str, keys: tuple[str, ...] = ("regime", "seed")) -> pd.DataFrame:
    """(keys) x layer table of one metric, encoder layers only (NaN where a layer has no value)."""
    d = tidy[(tidy["metric"] == metric) & (tidy["layer"] >= 0)] if len(tidy) else tidy
    if d is None or d.empty:
        return pd.DataFrame()
    return d.pivot_table(index=list(keys), columns="layer", values="value", aggfunc="mean").sort_index(axis=1)


def by_regime(g: pd.DataFrame, fn) -> dict[str, pd.Series]:
    """Per regime, a seed-indexed Series of fn(row of layer values)."""
    out = {}
    for r in REGIMES:
        if not g.empty and r in g.index.get_level_values("regime"):
            rows = g.xs(r, level="regime")
            out[r] = pd.Series({seed: fn(row.dropna()) for seed, row in rows.iterrows()}, dtype=float)
    return out


def over_minus_under(per: dict[str, pd.Series]) -> pd.Series | None:
    """OVER - UNDER per seed present in both, or None without both regimes."""
    return None if set(REGIMES) - set(per) else per["over"].sub(per["under"]).dropna().sort_index()


def inflection(ev: Evidence, depth: int) -> tuple[list[int], list[int]]:
    """(the paper's inflection layers, the same at our depth)."""
    run = ev.paper.inflection_layers() or []
    return run, map_band(run, depth) if run else []


def decay(row: pd.Series, lo: int, hi: int) -> float:
    """Mean change of log activation-gradient norm per layer from layer lo to hi (negative: decay)."""
    if lo not in row.index or hi not in row.index or hi <= lo or row[lo] <= 0 or row[hi] <= 0:
        return math.nan
    return (math.log(row[hi]) - math.log(row[lo])) / (hi - lo)


def regime_diff(
    ev: Evidence, pid: str, role: str, key: str, target: str, label: str, g: pd.DataFrame, fn, unit: str
) -> dict:
    """A part of OVER - UNDER per seed of fn(row of layer values), or Inconclusive without a pair."""
    d = over_minus_under(by_regime(g, fn))
    if d is None or not len(d):
        return missing_part(ev, pid, role, key, target, label, "the profile lacks an UNDER/OVER pair")
    return part(ev, pid, role, key, target, label, d, unit=unit)


def jaccard(a: list[int], b: list[int]) -> float:
    """|a & b| / |a | b| of two layer lists (1 for two empty ones)."""
    a, b = set(a), set(b)
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


P5_TEXT = (
    "OVER has lower attention entropy and an earlier, steeper activation-gradient decay in the middle layers than UNDER"
)


def p5_source_parts(ev: Evidence, target: str, H: pd.DataFrame, G: pd.DataFrame, lo: int, hi: int) -> list[dict]:
    """P5's primary parts: the source models' mean entropy and gradient decay, over - under."""
    entropy = "source models: mean entropy, over - under"
    slope = f"source models: log activation-gradient change per layer, layers {lo}-{hi}, over - under"
    return [
        regime_diff(ev, "P5", "primary", "entropy", target, entropy, H, lambda r: r.mean(), "nats"),
        regime_diff(ev, "P5", "primary", "decay", target, slope, G, lambda r: decay(r, lo, hi), "log per layer"),
    ]


def p5_layer_context(target: str, H: pd.DataFrame) -> list[dict]:
    """P5's context: the source models' entropy at each layer, over - under."""
    out = []
    for layer in H.columns if not H.empty else []:
        d = over_minus_under(by_regime(H, lambda r, x=layer: r.get(x, math.nan)))
        if d is not None and len(d):
            label, text = f"entropy at layer {layer}, over - under", f"mean {d.mean():+.3f} nats over {len(d)} seed(s)"
            out.append(context_part("P5", target, label, text, float(d.mean()), "nats"))
    return out


def p5_adapting(ev: Evidence, target: str, lo: int, hi: int) -> list[dict]:
    """P5's extension: mean entropy and gradient decay while adapting with each paper strategy, over - under."""
    lay, ext = of_target(ev.layers, target), []
    for s in PAPER_STRATEGIES:
        d = lay[lay["strategy"] == s] if len(lay) else lay
        if len(d) and set(REGIMES) <= set(d["regime"]):
            entropy = f"adapting with {s}: mean entropy, over - under"
            slope = f"adapting with {s}: log gradient change per layer {lo}-{hi}, over - under"
            H, G = grid(d, "entropy"), grid(d, "act_grad")
            ext.append(
                regime_diff(ev, "P5", "extension", "adapting-entropy", target, entropy, H, lambda r: r.mean(), "nats")
            )
            ext.append(
                regime_diff(
                    ev,
                    "P5",
                    "extension",
                    "adapting-decay",
                    target,
                    slope,
                    G,
                    lambda r: decay(r, lo, hi),
                    "log per layer",
                )
            )
    return ext


def p5(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P5: OVER has lower attention entropy and an earlier, steeper activation-gradient decay in the middle layers
    than UNDER (source models on the same batches, paired by seed); adaptation as our extension; per-layer context."""
    diag = of_target(ev.diagnose, target)
    run, ours = inflection(ev, depth_of(ev, diag))
    paper_value = f"sharper attention under OVER; inflection layers {run} of 12 (here {ours})"
    H, G = grid(diag, "entropy"), grid(diag, "act_grad")
    lo, hi = (max(0, min(ours) - 1), max(ours)) if ours else (0, 0)
    parts = p5_source_parts(ev, target, H, G, lo, hi) + p5_layer_context(target, H)
    ext = p5_adapting(ev, target, lo, hi)
    rows = [claim_row(ev, "P5", "primary", target, P5_TEXT, "7.1, Figures 2-4", paper_value, parts)]
    if ext:
        rows.append(claim_row(ev, "P5", "extension", target, P5_TEXT + " (while adapting)", "ours", "n/a", ext, "ours"))
    return rows, parts + ext


GRAD_PARTS = (("shallow", "act_grad"), ("full", "act_grad"), ("shallow", "param_grad"), ("full", "param_grad"))


def log_ratio(g: pd.DataFrame) -> pd.Series | None:
    """Per seed, log(mean over layers under OVER / the same under UNDER), of a (regime, seed) x layer grid."""
    return (
        over_minus_under(by_regime(g, lambda r: math.log(r.mean()) if len(r) and r.mean() > 0 else math.nan))
        if not g.empty
        else None
    )


def p6_stated(ev: Evidence) -> dict[tuple[str, str], tuple]:
    """The paper's (OVER, UNDER) mean gradient norm of each (strategy, measure) of GRAD_PARTS."""
    paper = ev.paper
    return {
        (s, k): (paper.grad_mean(f"{k}_mean", "over", s), paper.grad_mean(f"{k}_mean", "under", s))
        for s, k in GRAD_PARTS
    }


def p6_strategy_parts(
    ev: Evidence, target: str, lay: pd.DataFrame, s: str, metric: str, stated: dict
) -> tuple[dict, list[dict]]:
    """P6's primary part of one strategy and measure; for act_grad, the other two measures as extension parts."""
    d = lay[lay["strategy"] == s] if len(lay) else lay
    x, key = log_ratio(grid(d, metric) if len(d) else pd.DataFrame()), f"{s}-{metric}"
    o, u = stated[(s, metric)]
    pv = f"{o:.2g} vs {u:.2g} ({o / u:.2g}x)" if o and u else "n/a"
    main = (
        part(ev, "P6", "primary", key, target, f"{s}: {metric} over / under", x, unit="log ratio", paper_value=pv)
        if x is not None and len(x)
        else missing_part(
            ev, "P6", "primary", key, target, f"{s}: {metric}", f"the profile has no {s} cells in both regimes"
        )
    )
    ext = []
    for other in ("act_grad_token_mean", "act_grad_cls") if metric == "act_grad" else ():
        y = log_ratio(grid(d, other) if len(d) else pd.DataFrame())
        if y is not None and len(y):
            label = f"{s}: {other} over / under"
            ext.append(part(ev, "P6", "extension", "measures", target, label, y, unit="log ratio", paper_value=pv))
    return main, ext


def p6_source_context(ev: Evidence, target: str) -> list[dict]:
    """P6's context: the source models' gradient ratios on the same batches (geometric mean over seeds)."""
    diag, out = of_target(ev.diagnose, target), []
    for metric in ("act_grad", "param_grad"):
        x = log_ratio(grid(diag, metric))
        if x is not None and len(x.dropna()):
            label = f"source models on the same batches: {metric} over / under"
            text = f"{math.exp(x.mean()):.3g}x (geometric mean over {len(x)} seed(s))"
            out.append(context_part("P6", target, label, text, math.exp(x.mean()), "ratio"))
    return out


def p6(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P6: OVER / UNDER ratios of the mean gradient norms while adapting, per strategy, on the log scale (the primary
    activation-gradient measure is the paper's per-example norm); the other two measures as extension rows."""
    lay, parts, ext = of_target(ev.layers, target), [], []
    stated = p6_stated(ev)
    text = "OVER / UNDER mean gradient norms while adapting: " + "; ".join(
        f"{s} {k} {o / u:.2g}x" for (s, k), (o, u) in stated.items() if o and u
    )
    for s, metric in GRAD_PARTS:
        main, more = p6_strategy_parts(ev, target, lay, s, metric, stated)
        parts.append(main)
        ext += more
    parts += p6_source_context(ev, target)
    paper_value = "; ".join(f"{s} {k}: {o:.2g} vs {u:.2g}" for (s, k), (o, u) in stated.items() if o and u) or "n/a"
    rows = [claim_row(ev, "P6", "primary", target, text, "8", paper_value, parts)]
    if ext:
        text_ext = text + " (other gradient measures)"
        rows.append(claim_row(ev, "P6", "extension", target, text_ext, "ours", paper_value, ext, "ours"))
    return rows, parts + ext


def p7_identity(ev: Evidence, target: str, bands: dict, seeds: list[int]) -> dict:
    """P7's primary part: UNDER's and OVER's bands identical in each seed that has both."""
    pairs = [
        (s, bands[("under", s)], bands[("over", s)]) for s in seeds if ("under", s) in bands and ("over", s) in bands
    ]
    if not pairs:
        return missing_part(
            ev, "P7", "primary", "under-over", target, "UNDER vs OVER band", "the profile lacks an UNDER/OVER pair"
        )
    label = "UNDER and OVER bands identical, per seed"
    shown = [f"seed {s}: under {list(u)} / over {list(o)} (Jaccard {jaccard(u, o):.2f})" for s, u, o in pairs]
    return category_part(
        ev, "P7", "primary", "under-over", target, label, [u == o for _, u, o in pairs], True, shown=shown
    )


def p7_stability(ev: Evidence, target: str, bands: dict, seeds: list[int]) -> list[dict]:
    """P7's extension: within each regime, the same band in every pair of seeds."""
    ext = []
    for r in REGIMES:
        bs = [bands[(r, s)] for s in seeds if (r, s) in bands]
        if len(bs) >= 2:
            combos = list(itertools.combinations(bs, 2))
            label = f"{r}: the same band in every seed (pairs of seeds)"
            shown = [f"{list(a)} / {list(b)} (Jaccard {jaccard(a, b):.2f})" for a, b in combos]
            same = [a == b for a, b in combos]
            ext.append(category_part(ev, "P7", "extension", "stability", target, label, same, True, shown=shown))
    return ext


def p7(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P7: UNDER and OVER select the same band, in every seed (identity, with Jaccard shown); stability across seeds."""
    sel = of_target(ev.selection, target)
    band = ev.paper.band()
    text = "UNDER and OVER identify the same inflection band via SKI, in every seed"
    paper_value = (
        f"the same band {band} for both regimes and all seeds"
        if band
        else "the same band for both regimes and all seeds"
    )
    bands = {(r.regime, int(r.seed)): tuple(r.band) for r in sel.itertuples()} if len(sel) else {}
    seeds = sorted({s for _, s in bands})
    parts = [p7_identity(ev, target, bands, seeds)]
    ext = p7_stability(ev, target, bands, seeds)
    rows = [claim_row(ev, "P7", "primary", target, text, "7.2, 8", paper_value, parts)]
    if ext:
        text_ext = "the band is the same in every seed of a regime"
        rows.append(claim_row(ev, "P7", "extension", target, text_ext, "ours", paper_value, ext, "ours"))
    return rows, parts + ext
