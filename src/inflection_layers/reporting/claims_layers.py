"""The paper's layer-wise claims P5-P10, one function each, pure over the Evidence DataFrames.

Layers are the encoder's 0 .. L-1 (the embeddings, -1, are left out). The paper's layer indices are for
bert-base (12 layers); for a model of another depth they are compared at the same relative depth
(:func:`inflection_layers.reporting.paper.paper_layers`). The paper's *inflection layers* are the contiguous run of its
band ({4, 5, 6}, :meth:`~inflection_layers.reporting.paper.Paper.inflection_layers`); *upper layers* are those above them.
A stated value "about x" is matched within a factor of ``ABOUT``; "near 0" means below ``NEAR_ZERO`` times the
compared value.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from inflection_layers.bands import select_band
from inflection_layers.reporting import verdicts as V
from inflection_layers.reporting.claims_base import Evidence, category_part, claim_row, missing_part, seed_part
from inflection_layers.reporting.paper import map_band, paper_layers

ABOUT = 2.0  # "about x": within [x / ABOUT, x * ABOUT]
NEAR_ZERO = 0.1  # "near 0": below this share of the value it is compared with
PAPER_STRATEGIES = ("shallow", "full", "lora_selective", "lora_all")
REGIMES = ("under", "over")


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


def p5(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P5: OVER has lower attention entropy and an earlier, steeper activation-gradient decay in the middle
    layers than UNDER (same batches, paired by seed); the inflection lies at the paper's layers 5-7 equivalent."""
    diag = ev.diagnose[ev.diagnose["target"] == target] if len(ev.diagnose) else ev.diagnose
    L = ev.num_layers or (int(diag["layer"].max()) + 1 if len(diag) else 0)
    run, ours = inflection(ev, L)
    text = "OVER has lower attention entropy and an earlier, steeper activation-gradient decay in the middle layers than UNDER"
    paper_value = f"sharper attention under OVER; inflection layers {run} of 12 (here {ours})"
    H, G = grid(diag, "entropy"), grid(diag, "act_grad")
    parts = []
    lo, hi = (max(0, min(ours) - 1), max(ours)) if ours else (0, 0)
    thr = ev.paper.greedy_threshold()

    def pair(label: str, g: pd.DataFrame, fn, unit: str, in_verdict: bool = True) -> None:
        d = over_minus_under(by_regime(g, fn))
        parts.append(
            seed_part("P5", target, label, d, "less", ev, scale=1.0, unit=unit, in_verdict=in_verdict)
            if d is not None and len(d)
            else missing_part("P5", target, label, "the profile lacks an UNDER/OVER pair")
        )

    pair("source models: mean entropy over layers, over - under", H, lambda r: r.mean(), "nats")
    pair(
        f"source models: log activation-gradient change per layer from layer {lo} to {hi}, over - under",
        G,
        lambda r: decay(r, lo, hi),
        "log/layer",
    )
    if thr is not None:
        first = lambda r: (
            float(np.argmax((r / r.max()).to_numpy() < thr)) if ((r / r.max()) < thr).any() else float(len(r))
        )
        pair(f"source models: first layer with G / max G < {thr:g}, over - under", G, first, "layers")
    if not G.empty and ours:
        steep = {k: int(np.diff(np.log(row.dropna().to_numpy())).argmin()) + 1 for k, row in G.iterrows()}
        parts.append(
            category_part(
                "P5",
                target,
                f"source models: steepest activation-gradient drop at the inflection layers {ours}",
                [v in ours for v in steep.values()],
                True,
                shown=[f"{r}-{s}: layer {v}" for (r, s), v in steep.items()],
            )
        )
    for layer in H.columns if not H.empty else []:
        pair(
            f"source models: entropy at layer {layer}, over - under",
            H,
            lambda r, l=layer: r.get(l, math.nan),
            "nats",
            in_verdict=False,
        )
    lay = ev.layers[ev.layers["target"] == target] if len(ev.layers) else ev.layers
    for s in PAPER_STRATEGIES:
        d = lay[lay["strategy"] == s] if len(lay) else lay
        if len(d) and set(REGIMES) <= set(d["regime"]):
            pair(f"adapting with {s}: mean entropy, over - under", grid(d, "entropy"), lambda r: r.mean(), "nats")
            pair(
                f"adapting with {s}: log activation-gradient change per layer, layers {lo}-{hi}, over - under",
                grid(d, "act_grad"),
                lambda r: decay(r, lo, hi),
                "log/layer",
            )
    return claim_row("P5", target, text, "7.1, Figures 2-4", paper_value, parts), parts


def p6(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P6: OVER / UNDER ratios of the mean gradient norms while adapting, per strategy, on the log scale."""
    lay = ev.layers[ev.layers["target"] == target] if len(ev.layers) else ev.layers
    paper, parts, stated = ev.paper, [], {}
    for s in ("shallow", "full"):
        for kind in ("act_grad_mean", "param_grad_mean"):
            po, pu = paper.grad_mean(kind, "over", s), paper.grad_mean(kind, "under", s)
            if po and pu:
                stated[(s, kind)] = (po, pu, math.log(po / pu))
    big = [abs(x[2]) for x in stated.values() if abs(x[2]) >= math.log(ABOUT)]
    text = "OVER / UNDER mean gradient norms while adapting: " + (
        "; ".join(f"{s} {k.split('_mean')[0]} {math.exp(x[2]):.2g}x" for (s, k), x in stated.items())
        or "smaller under OVER"
    )
    for s in ("shallow", "full"):
        d = lay[lay["strategy"] == s] if len(lay) else lay
        for kind in ("act_grad_mean", "param_grad_mean"):
            metric = kind.removesuffix("_mean")
            label = f"{s}: {metric} over / under"
            per = by_regime(
                grid(d, metric) if len(d) else pd.DataFrame(),
                lambda r: math.log(r.mean()) if len(r) and r.mean() > 0 else math.nan,
            )
            x = over_minus_under(per)
            if x is None or not len(x.dropna()):
                parts.append(missing_part("P6", target, label, f"the profile has no {s} cells in both regimes"))
                continue
            means = {r: float(np.exp(per[r]).mean()) for r in REGIMES}
            label += f" (ours {means['over']:.2g} vs {means['under']:.2g})"
            po, pu, lr = stated.get((s, kind), (None, None, None))
            pv = "n/a" if lr is None else f"{po:.2g} vs {pu:.2g} ({math.exp(lr):.2g}x)"
            if lr is not None and abs(lr) < math.log(ABOUT) and big:
                margin, why = V.equivalence_margin(None, min(big))
                parts.append(
                    seed_part(
                        "P6",
                        target,
                        label + ", comparable",
                        x,
                        "equivalent",
                        ev,
                        log=True,
                        margin=margin,
                        margin_reason=f"{why.replace('points', 'log units')} (the smallest ratio the paper calls a difference)",
                        paper_value=pv,
                    )
                )
            else:
                parts.append(
                    seed_part(
                        "P6",
                        target,
                        label + ", smaller",
                        x,
                        "less",
                        ev,
                        log=True,
                        effect=abs(lr) if lr else None,
                        paper_value=pv,
                    )
                )
    diag = ev.diagnose[ev.diagnose["target"] == target] if len(ev.diagnose) else ev.diagnose
    for metric in ("act_grad", "param_grad"):
        x = over_minus_under(
            by_regime(grid(diag, metric), lambda r: math.log(r.mean()) if len(r) and r.mean() > 0 else math.nan)
        )
        if x is not None and len(x.dropna()):
            parts.append(
                seed_part(
                    "P6",
                    target,
                    f"source models on the same batches: {metric} over / under",
                    x,
                    "less",
                    ev,
                    log=True,
                    in_verdict=False,
                )
            )
    return claim_row(
        "P6",
        target,
        text,
        "8",
        "; ".join(f"{s} {k}: {v[0]:.2g} vs {v[1]:.2g}" for (s, k), v in stated.items()) or "n/a",
        parts,
    ), parts


def jaccard(a: list[int], b: list[int]) -> float:
    a, b = set(a), set(b)
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


def p7(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P7: UNDER and OVER select the same band, in every seed (identity and Jaccard)."""
    sel = ev.selection[ev.selection["target"] == target] if len(ev.selection) else ev.selection
    band = ev.paper.band()
    text = "UNDER and OVER identify the same inflection band via SKI, in every seed"
    paper_value = (
        f"the same band {band} for both regimes and all seeds"
        if band
        else "the same band for both regimes and all seeds"
    )
    bands = {(r.regime, int(r.seed)): tuple(r.band) for r in sel.itertuples()} if len(sel) else {}
    seeds = sorted({s for _, s in bands})
    parts = []
    pairs = [
        (s, bands[("under", s)], bands[("over", s)]) for s in seeds if ("under", s) in bands and ("over", s) in bands
    ]
    if pairs:
        parts.append(
            category_part(
                "P7",
                target,
                "UNDER and OVER bands identical, per seed",
                [u == o for _, u, o in pairs],
                True,
                shown=[
                    f"seed {s}: under {list(u)} / over {list(o)} (Jaccard {jaccard(u, o):.2f})" for s, u, o in pairs
                ],
            )
        )
    else:
        parts.append(missing_part("P7", target, "UNDER vs OVER band", "the profile lacks an UNDER/OVER pair"))
    for r in REGIMES:
        bs = [bands[(r, s)] for s in seeds if (r, s) in bands]
        if len(bs) >= 2:
            pairs_ = list(itertools.combinations(bs, 2))
            parts.append(
                category_part(
                    "P7",
                    target,
                    f"{r}: the same band in every seed (pairs of seeds)",
                    [a == b for a, b in pairs_],
                    True,
                    shown=[f"{list(a)} / {list(b)} (Jaccard {jaccard(a, b):.2f})" for a, b in pairs_],
                )
            )
        elif bs:
            parts.append(
                missing_part(
                    "P7",
                    target,
                    f"{r}: the same band in every seed",
                    "one seed only: agreement across seeds cannot be observed",
                )
            )
    return claim_row("P7", target, text, "7.2, 8", paper_value, parts), parts


def p8(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P8: the entropy minimum at layer 5 of 12 (same relative depth here); the paper's greedy rule's band."""
    diag = ev.diagnose[ev.diagnose["target"] == target] if len(ev.diagnose) else ev.diagnose
    L = ev.num_layers or (int(diag["layer"].max()) + 1 if len(diag) else 0)
    paper, parts = ev.paper, []
    m, band, thr = paper.entropy_min_layer(), paper.band(), paper.greedy_threshold()
    s = paper.greedy_s() if paper.greedy_s() is not None else ev.params.ski.s
    want = paper_layers(m, L) if m is not None and L else []
    mapped = map_band(band, L) if band and L else []
    text = f"the attention-entropy minimum is at layer {m}; the greedy rule selects {band}"
    paper_value = f"entropy minimum at layer {m} (here {want}); band {band} (here {mapped})"
    H, G = grid(diag, "entropy"), grid(diag, "act_grad")
    if not H.empty and want:
        argmin = {k: int(row.dropna().idxmin()) for k, row in H.iterrows()}
        parts.append(
            category_part(
                "P8",
                target,
                f"source models: entropy minimum at layer {want}",
                [v in want for v in argmin.values()],
                True,
                shown=[f"{r}-{sd}: {v}" for (r, sd), v in argmin.items()],
            )
        )
        lay = ev.layers[ev.layers["target"] == target] if len(ev.layers) else ev.layers
        C = grid(lay, "entropy", ("regime", "seed", "strategy")) if len(lay) else pd.DataFrame()
        if not C.empty:
            cm = {k: int(row.dropna().idxmin()) for k, row in C.iterrows()}
            parts.append(
                category_part(
                    "P8",
                    target,
                    f"adapted cells: entropy minimum at layer {want}",
                    [v in want for v in cm.values()],
                    True,
                    shown=[
                        f"{sum(v in want for v in cm.values())} of {len(cm)} cells; layers {sorted(set(cm.values()))}"
                    ],
                )
            )
        rng = paper.entropy_range()
        if rng:
            mins = {k: float(row.min()) for k, row in H.iterrows()}
            parts.append(
                category_part(
                    "P8",
                    target,
                    f"source models: minimum entropy within the paper's {rng[0]:g}-{rng[1]:g} (context: another model)",
                    [rng[0] <= v <= rng[1] for v in mins.values()],
                    True,
                    shown=[f"{r}-{sd}: {v:.3f}" for (r, sd), v in mins.items()],
                    in_verdict=False,
                )
            )
    else:
        parts.append(missing_part("P8", target, "entropy minimum", "no source-model entropy or no stated minimum"))
    if not H.empty and not G.empty and thr is not None and mapped:
        picks = {}
        for k in H.index:
            h, g = H.loc[k].dropna(), G.loc[k].reindex(H.loc[k].dropna().index)
            picks[k] = tuple(
                select_band(
                    h.to_numpy(),
                    g.to_numpy(),
                    method="greedy",
                    alpha=ev.params.ski.alpha,
                    s=s,
                    threshold=thr,
                    max_band=None,
                )["band"]
            )
        parts.append(
            category_part(
                "P8",
                target,
                f"the paper's greedy rule (threshold {thr:g}, s {s}, no cap) on our diagnostics picks {mapped}",
                list(picks.values()),
                tuple(mapped),
                shown=[f"{r}-{sd}: {list(b)} (Jaccard {jaccard(b, mapped):.2f})" for (r, sd), b in picks.items()],
            )
        )
    return claim_row("P8", target, text, "5", paper_value, parts), parts


def p9(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P9: probe accuracy peaks in the upper layers, higher under OVER, the gap in the uppermost layers (not at
    the inflection layers), above the shuffled-label control."""
    pr = ev.probes[ev.probes["target"] == target] if len(ev.probes) else ev.probes
    paper = ev.paper
    peaks = {r: paper.probe_peak(r) for r in REGIMES}
    strategy = paper.probe_strategy()
    if len(pr) and strategy not in set(pr["strategy"]):
        strategy = "none" if "none" in set(pr["strategy"]) else pr["strategy"].iloc[0]
    text = "probe accuracy rises mainly in the upper layers; OVER peaks higher than UNDER; the gap arises in the uppermost layers"
    paper_value = ", ".join(f"{r} {100 * p[1]:.1f}% at layer {p[0]}" for r, p in peaks.items() if p) or "n/a"
    d = pr[pr["strategy"] == strategy] if len(pr) else pr
    lin = grid(d, "linear") if len(d) else pd.DataFrame()
    if lin.empty:
        part = missing_part("P9", target, "probes", "no probe table for this target")
        return claim_row("P9", target, text, "7.3", paper_value, [part]), [part]
    L = ev.num_layers or int(lin.columns.max()) + 1
    _, infl = inflection(ev, L)
    upper = [x for x in lin.columns if infl and x > max(infl)]
    parts = []
    stated = peaks["over"][1] - peaks["under"][1] if all(peaks.values()) else None
    x = over_minus_under(by_regime(lin, lambda r: r.max()))
    parts.append(
        seed_part(
            "P9",
            target,
            f"{strategy}: peak linear-probe accuracy, over - under",
            x,
            "greater",
            ev,
            effect=stated if stated and stated > 0 else None,
            paper_value=f"{100 * stated:+.1f} points" if stated else "n/a",
        )
        if x is not None
        else missing_part("P9", target, "peak over - under", "the profile lacks an UNDER/OVER pair")
    )
    argmax = {k: int(row.dropna().idxmax()) for k, row in lin.iterrows()}
    parts.append(
        category_part(
            "P9",
            target,
            f"{strategy}: peak layer among the upper layers {upper}",
            [v in upper for v in argmax.values()],
            True,
            shown=[f"{r}-{s}: {v}" for (r, s), v in argmax.items()],
        )
        if upper
        else missing_part("P9", target, "peak in the upper layers", "no probed layer lies above the inflection layers")
    )
    at = [x for x in lin.columns if x in infl]
    if upper and at:
        gap = over_minus_under(by_regime(lin, lambda r: r.reindex(upper).mean() - r.reindex(at).mean()))
        if gap is not None:
            parts.append(
                seed_part(
                    "P9",
                    target,
                    f"{strategy}: over - under gap, upper layers {upper} minus inflection layers {at}",
                    gap,
                    "greater",
                    ev,
                )
            )
    shuf = grid(d, "linear_shuffled")
    if not shuf.empty:
        for r, g in by_regime(lin, lambda row: float(row.idxmax())).items():
            sel = pd.Series(
                {
                    sd: lin.loc[(r, sd), int(l)] - shuf.loc[(r, sd), int(l)]
                    for sd, l in g.items()
                    if (r, sd) in shuf.index
                }
            )
            parts.append(
                seed_part(
                    "P9",
                    target,
                    f"{strategy} {r}: peak minus the shuffled-label control at the peak layer",
                    sel,
                    "greater",
                    ev,
                )
            )
    return claim_row("P9", target, text, "7.3", paper_value, parts), parts


def p10(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P10: Delta-CKA largest in the upper layers with full unfreezing (the range stated.csv gives); with shallow, near 0 in the frozen
    layers and about the stated value in the trainable ones."""
    c = ev.cka[(ev.cka["target"] == target) & (ev.cka["metric"] == "delta_cka")] if len(ev.cka) else ev.cka
    paper, k = ev.paper, ev.params.finetune.shallow_k
    text = "Delta-CKA is largest in the upper layers with full unfreezing; with shallow, near 0 in frozen layers and small in the trainable ones"
    ranges = {
        (s, r): paper.cka_range(kind, r, s)
        for s, kind in (("full", "delta_cka_upper"), ("shallow", "delta_cka_top2"))
        for r in REGIMES
    }
    paper_value = (
        "; ".join(
            f"{s} {r}: {lo:g}-{hi:g}" if lo != hi else f"{s} {r}: {lo:g}"
            for (s, r), v in ranges.items()
            if v
            for lo, hi in [v]
        )
        or "n/a"
    )
    parts = []
    for s in ("full", "shallow"):
        g = grid(c[c["strategy"] == s], "delta_cka") if len(c) else pd.DataFrame()
        if g.empty:
            parts.append(
                missing_part("P10", target, f"{s}: Delta-CKA", f"no Delta-CKA of {s} cells (analysis.strategies)")
            )
            continue
        L = ev.num_layers or int(g.columns.max()) + 1
        _, infl = inflection(ev, L)
        top = [x for x in g.columns if (x > max(infl) if s == "full" and infl else x >= L - k)]
        rest = [x for x in g.columns if x not in top]
        if not top or not rest:
            parts.append(missing_part("P10", target, f"{s}: upper vs other layers", "no layer on one side"))
            continue
        for r in REGIMES:
            if r not in g.index.get_level_values("regime"):
                continue
            rows = g.xs(r, level="regime")
            if s == "full":
                diff = rows[top].mean(axis=1) - rows[rest].mean(axis=1)
                parts.append(
                    seed_part(
                        "P10",
                        target,
                        f"full {r}: mean Delta-CKA of the upper layers {top} minus the others",
                        diff,
                        "greater",
                        ev,
                        scale=1.0,
                        unit="1-CKA",
                    )
                )
            else:
                diff = rows[top].mean(axis=1) - rows[rest].abs().max(axis=1)
                parts.append(
                    seed_part(
                        "P10",
                        target,
                        f"shallow {r}: trainable layers {top} minus the largest frozen-layer value",
                        diff,
                        "greater",
                        ev,
                        scale=1.0,
                        unit="1-CKA",
                    )
                )
                parts.append(
                    category_part(
                        "P10",
                        target,
                        f"shallow {r}: frozen layers near 0 (below {NEAR_ZERO:g} x the trainable layers' mean)",
                        [bool(a < NEAR_ZERO * b) for a, b in zip(rows[rest].abs().max(axis=1), rows[top].mean(axis=1))],
                        True,
                        shown=[f"{v:.2g}" for v in rows[rest].abs().max(axis=1)],
                    )
                )
            rng = ranges.get((s, r))
            if rng:
                lo, hi = (rng[0] / ABOUT, rng[1] * ABOUT) if rng[0] == rng[1] else rng
                vals = rows[top].mean(axis=1)
                parts.append(
                    category_part(
                        "P10",
                        target,
                        f"{s} {r}: Delta-CKA of layers {top} within {lo:g}-{hi:g}",
                        [bool(lo <= v <= hi) for v in vals],
                        True,
                        shown=[f"{v:.3g}" for v in vals],
                    )
                )
    return claim_row("P10", target, text, "7.3", paper_value, parts), parts
