"""The paper's claims about where in depth things happen, P8-P10, one function each, pure over the Evidence
DataFrames: the entropy minimum and the greedy rule's band (P8), where probe accuracy peaks (P9) and where
fine-tuning changes the representations (P10, Delta-CKA).

Layers and the paper's layer indices are read as in :mod:`~inflection_layers.reporting.claims_layers` (the
same relative depth; the inflection layers are the contiguous run of the paper's band). Every part's rule and
effect come from the decision table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inflection_layers.bands import select_band
from inflection_layers.reporting.claims_base import Evidence, category_part, claim_row, context_part, missing_part, part
from inflection_layers.reporting.claims_layers import (
    REGIMES,
    by_regime,
    depth_of,
    grid,
    inflection,
    jaccard,
    of_target,
    regime_diff,
)
from inflection_layers.reporting.paper import map_band, paper_layers


def p8_minimum(ev: Evidence, target: str, H: pd.DataFrame, want: list[int]) -> list[dict]:
    """P8's entropy-minimum part and, where stated, the minimum entropies as context; or Inconclusive."""
    if H.empty or not want:
        why = "no source-model entropy or no stated minimum"
        return [missing_part(ev, "P8", "primary", "entropy-minimum", target, "entropy minimum", why)]
    argmin = {k: int(row.dropna().idxmin()) for k, row in H.iterrows()}
    label = f"source models: entropy minimum at layer {want}"
    hits, shown = [v in want for v in argmin.values()], [f"{r}-{sd}: {v}" for (r, sd), v in argmin.items()]
    parts = [category_part(ev, "P8", "primary", "entropy-minimum", target, label, hits, True, shown=shown)]
    rng = ev.paper.entropy_range()
    if rng:
        mins = [float(row.min()) for _, row in H.iterrows()]
        label = f"minimum entropy (the paper's {rng[0]:g}-{rng[1]:g} is bert-base's)"
        text = ", ".join(f"{v:.3f}" for v in mins)
        parts.append(context_part("P8", target, label, text, float(np.mean(mins)), "nats"))
    return parts


def greedy_picks(ev: Evidence, H: pd.DataFrame, G: pd.DataFrame, s: int, thr: float) -> dict[tuple, tuple]:
    """Per (regime, seed): the band the paper's greedy rule (no cap) picks from a source model's diagnostics."""
    picks = {}
    for k in H.index:
        h = H.loc[k].dropna()
        g = G.loc[k].reindex(h.index)
        chosen = select_band(
            h.to_numpy(), g.to_numpy(), method="greedy", alpha=ev.params.ski.alpha, s=s, threshold=thr, max_band=None
        )
        picks[k] = tuple(chosen["band"])
    return picks


def p8_greedy(
    ev: Evidence, target: str, H: pd.DataFrame, G: pd.DataFrame, thr: float | None, s: int, mapped: list[int]
) -> dict:
    """P8's greedy-band part: the paper's rule picks the paper's band (mapped to our depth); or Inconclusive."""
    if H.empty or G.empty or thr is None or not mapped:
        why = "no diagnostics or no stated band"
        return missing_part(ev, "P8", "primary", "greedy-band", target, "greedy band", why)
    picks = greedy_picks(ev, H, G, s, thr)
    label = f"the paper's greedy rule (threshold {thr:g}, s {s}, no cap) picks {mapped}"
    shown = [f"{r}-{sd}: {list(b)} (Jaccard {jaccard(b, mapped):.2f})" for (r, sd), b in picks.items()]
    observed = list(picks.values())
    return category_part(ev, "P8", "primary", "greedy-band", target, label, observed, tuple(mapped), shown=shown)


def p8(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P8: the entropy minimum at the paper's layer 5 (same relative depth here); the paper's greedy rule's band."""
    diag = of_target(ev.diagnose, target)
    L = depth_of(ev, diag)
    paper = ev.paper
    m, band, thr = paper.entropy_min_layer(), paper.band(), paper.greedy_threshold()
    s = paper.greedy_s() if paper.greedy_s() is not None else ev.params.ski.s
    want = paper_layers(m, L) if m is not None and L else []
    mapped = map_band(band, L) if band and L else []
    text = f"the attention-entropy minimum is at layer {m}; the greedy rule selects {band}"
    paper_value = f"entropy minimum at layer {m} (here {want}); band {band} (here {mapped})"
    H, G = grid(diag, "entropy"), grid(diag, "act_grad")
    parts = [*p8_minimum(ev, target, H, want), p8_greedy(ev, target, H, G, thr, s, mapped)]
    return [claim_row(ev, "P8", "primary", target, text, "5", paper_value, parts)], parts


P9_TEXT = (
    "probe accuracy rises mainly in the upper layers; OVER peaks higher than UNDER; the gap arises in the "
    "uppermost layers"
)


def probe_strategy(ev: Evidence, probes: pd.DataFrame) -> str | None:
    """The strategy whose probes P9 reads: the paper's where probed, else `none`, else the first one probed."""
    strategy = ev.paper.probe_strategy()
    if len(probes) and strategy not in set(probes["strategy"]):
        strategy = "none" if "none" in set(probes["strategy"]) else probes["strategy"].iloc[0]
    return strategy


def p9_peak_layer(ev: Evidence, target: str, strategy: str | None, lin: pd.DataFrame, upper: list) -> dict:
    """P9's peak-layer part: each probe run peaks among the upper layers; or Inconclusive without upper layers."""
    argmax = {k: int(row.dropna().idxmax()) for k, row in lin.iterrows()}
    if not upper:
        why = "no probed layer lies above the inflection layers"
        return missing_part(ev, "P9", "primary", "peak-layer", target, "peak in the upper layers", why)
    label = f"{strategy}: peak layer among the upper layers {upper}"
    hits, shown = [v in upper for v in argmax.values()], [f"{r}-{s}: {v}" for (r, s), v in argmax.items()]
    return category_part(ev, "P9", "primary", "peak-layer", target, label, hits, True, shown=shown)


def p9_controls(ev: Evidence, target: str, strategy: str | None, lin: pd.DataFrame, shuf: pd.DataFrame) -> list[dict]:
    """P9's control parts: per regime, peak accuracy minus the shuffled-label control at the peak layer."""
    out = []
    for r, g in by_regime(lin, lambda row: float(row.idxmax())).items() if not shuf.empty else []:
        x = pd.Series(
            {sd: lin.loc[(r, sd), int(l)] - shuf.loc[(r, sd), int(l)] for sd, l in g.items() if (r, sd) in shuf.index}
        )
        label = f"{strategy} {r}: peak minus the shuffled-label control at the peak layer"
        out.append(part(ev, "P9", "primary", "control", target, label, x))
    return out


def p9(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P9: probe accuracy peaks in the upper layers, higher under OVER, the gap in the uppermost layers (not at the
    inflection layers), above the shuffled-label control the claim names."""
    pr = of_target(ev.probes, target)
    peaks = {r: ev.paper.probe_peak(r) for r in REGIMES}
    strategy = probe_strategy(ev, pr)
    paper_value = ", ".join(f"{r} {100 * p[1]:.1f}% at layer {p[0]}" for r, p in peaks.items() if p) or "n/a"
    d = pr[pr["strategy"] == strategy] if len(pr) else pr
    lin = grid(d, "linear") if len(d) else pd.DataFrame()
    if lin.empty:
        keys = ("peak", "peak-layer", "upper-gap", "control")
        parts = [missing_part(ev, "P9", "primary", k, target, k, "no probe table for this target") for k in keys]
        return [claim_row(ev, "P9", "primary", target, P9_TEXT, "7.3", paper_value, parts)], parts
    _, infl = inflection(ev, ev.num_layers or int(lin.columns.max()) + 1)
    upper, at = [x for x in lin.columns if infl and x > max(infl)], [x for x in lin.columns if x in infl]
    peak = f"{strategy}: peak linear-probe accuracy, over - under"
    parts = [regime_diff(ev, "P9", "primary", "peak", target, peak, lin, lambda r: r.max(), "points")]
    parts.append(p9_peak_layer(ev, target, strategy, lin, upper))
    if upper and at:
        gap = f"{strategy}: over - under gap, upper layers {upper} minus inflection layers {at}"
        parts.append(
            regime_diff(
                ev,
                "P9",
                "primary",
                "upper-gap",
                target,
                gap,
                lin,
                lambda r: r.reindex(upper).mean() - r.reindex(at).mean(),
                "points",
            )
        )
    parts += p9_controls(ev, target, strategy, lin, grid(d, "linear_shuffled"))
    return [claim_row(ev, "P9", "primary", target, P9_TEXT, "7.3", paper_value, parts)], parts


P10_TEXT = (
    "Delta-CKA is largest in the upper layers with full unfreezing; with shallow, near 0 in frozen layers and "
    "small in the trainable ones"
)


def p10_paper_value(ev: Evidence) -> str:
    """The paper's stated Delta-CKA ranges: full in the upper layers, shallow in its top two."""
    ranges = {
        (s, r): ev.paper.cka_range(kind, r, s)
        for s, kind in (("full", "delta_cka_upper"), ("shallow", "delta_cka_top2"))
        for r in REGIMES
    }
    return (
        "; ".join(
            f"{s} {r}: {lo:g}-{hi:g}" if lo != hi else f"{s} {r}: {lo:g}"
            for (s, r), v in ranges.items()
            if v
            for lo, hi in [v]
        )
        or "n/a"
    )


def p10_regime_parts(
    ev: Evidence, target: str, s: str, r: str, rows: pd.DataFrame, top: list, rest: list
) -> list[dict]:
    """P10's parts of one strategy and regime: the top layers' Delta-CKA against the others', and its size."""
    order = rows[top].mean(axis=1) - (rows[rest].mean(axis=1) if s == "full" else rows[rest].abs().max(axis=1))
    label = f"{s} {r}: Delta-CKA of layers {top} minus the {'mean' if s == 'full' else 'largest'} of the others"
    key, size = "full-range" if s == "full" else "shallow-value", f"{s} {r}: Delta-CKA of layers {top}"
    out = [
        part(ev, "P10", "primary", f"{s}-order", target, label, order, unit="1-CKA", regime=r),
        part(ev, "P10", "primary", key, target, size, rows[top].mean(axis=1), unit="1-CKA", regime=r),
    ]
    if s == "shallow":
        frozen = rows[rest].abs().max(axis=1) / rows[top].mean(axis=1)
        label = f"shallow {r}: frozen layers' largest Delta-CKA / the trainable layers'"
        text = ", ".join(f"{v:.2g}" for v in frozen)
        out.append(context_part("P10", target, label, text, float(frozen.mean()), "ratio"))
    return out


def p10_strategy_parts(ev: Evidence, target: str, cka: pd.DataFrame, s: str) -> list[dict]:
    """P10's parts of one strategy: full's layers above the inflection layers, shallow's trainable top k."""
    g = grid(cka[cka["strategy"] == s], "delta_cka") if len(cka) else pd.DataFrame()
    if g.empty:
        keys = ("order", "range" if s == "full" else "value")
        why = f"no Delta-CKA of {s} cells"
        return [missing_part(ev, "P10", "primary", f"{s}-{x}", target, f"{s}: Delta-CKA", why) for x in keys]
    L, k = ev.num_layers or int(g.columns.max()) + 1, ev.params.finetune.shallow_k
    _, infl = inflection(ev, L)
    top = [x for x in g.columns if (x > max(infl) if s == "full" and infl else x >= L - k)]
    rest = [x for x in g.columns if x not in top]
    out = []
    for r in [x for x in REGIMES if x in g.index.get_level_values("regime")]:
        rows = g.xs(r, level="regime")
        if top and rest:
            out += p10_regime_parts(ev, target, s, r, rows, top, rest)
    return out


def p10(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P10: Delta-CKA largest in the upper layers with full unfreezing, within the stated range; with shallow, near 0
    in the frozen layers and about the stated value in the trainable ones."""
    c = ev.cka[(ev.cka["target"] == target) & (ev.cka["metric"] == "delta_cka")] if len(ev.cka) else ev.cka
    paper_value = p10_paper_value(ev)
    parts = p10_strategy_parts(ev, target, c, "full") + p10_strategy_parts(ev, target, c, "shallow")
    return [claim_row(ev, "P10", "primary", target, P10_TEXT, "7.3", paper_value, parts)], parts
