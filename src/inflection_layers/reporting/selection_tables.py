"""The tables of the layer selection, pure over DataFrames: the band every variant of the rule picks from the saved
diagnostics (the selection ablation), the layers of every selector per group, and the band under each
activation-gradient measure. :mod:`~inflection_layers.reporting.tables` re-exports them.
"""

from __future__ import annotations

import itertools

import pandas as pd

from inflection_layers.bands import METHODS, select_band

ALPHAS, WIDENINGS = (0.25, 0.5, 0.75), (0, 1)
MEASURES = ("act_grad", "act_grad_token_mean", "act_grad_cls")


def selection_ablation(diagnose: pd.DataFrame, selection: pd.DataFrame, ski) -> pd.DataFrame:
    """The band every rule variant picks per group from the saved diagnostics alone: alpha x s x method x cap."""
    rows = []
    study = {(r.target, r.regime, int(r.seed)): list(r.band) for r in selection.itertuples()} if len(selection) else {}
    caps = list(dict.fromkeys([ski.max_band, None]))
    for (t, r, seed), g in diagnose[diagnose["layer"] >= 0].groupby(["target", "regime", "seed"], sort=False):
        w = g.pivot_table(index="layer", columns="metric", values="value").sort_index()
        for alpha, s, method, cap in itertools.product(ALPHAS, WIDENINGS, METHODS, caps):
            band = select_band(
                w["entropy"].to_numpy(),
                w["act_grad"].to_numpy(),
                method=method,
                alpha=alpha,
                s=s,
                threshold=ski.threshold,
                max_band=cap,
            )["band"]
            rows.append(
                {
                    "group": f"{t}-{r}-{seed}",
                    "target": t,
                    "regime": r,
                    "seed": int(seed),
                    "method": method,
                    "alpha": alpha,
                    "s": s,
                    "cap": "none" if cap is None else int(cap),
                    "threshold": ski.threshold,
                    "band": " ".join(map(str, band)),
                    "size": len(band),
                    "study_rule": (method, alpha, s, cap) == (ski.method, ski.alpha, ski.s, ski.max_band),
                    "equals_study_band": band == study.get((t, r, int(seed))),
                }
            )
    return pd.DataFrame(rows)


def bands_table(selection: pd.DataFrame) -> pd.DataFrame:
    """Per group: the layers of SKI, its complement, Auto-RGN, representation change and each random draw."""
    rows = []
    for r in selection.itertuples():
        ski = set(r.band)
        named = [
            ("ski", r.band, ""),
            ("top", r.top, ""),
            ("complement", r.complement, ""),
            ("rgn", r.rgn, ""),
            ("cka", r.cka, ""),
        ]
        named += [(f"random_{i}", d["layers"], "random") for i, d in enumerate(r.random)]
        for name, layers, tier in named:
            rows.append(
                {
                    "group": f"{r.target}-{r.regime}-{r.seed}",
                    "target": r.target,
                    "regime": r.regime,
                    "seed": int(r.seed),
                    "selector": name,
                    "layers": " ".join(map(str, layers)),
                    "size": len(layers),
                    "overlap_with_ski": len(ski & set(layers)),
                    "jaccard_with_ski": len(ski & set(layers)) / len(ski | set(layers)) if ski | set(layers) else 1.0,
                    "tier": tier,
                }
            )
    return pd.DataFrame(rows)


def measure_sensitivity(diagnose: pd.DataFrame, selection: pd.DataFrame, ski) -> pd.DataFrame:
    """Per group: the band the study's rule picks with each activation-gradient measure (the primary per-example norm,
    the token mean, the first token), and whether the others agree with the primary."""
    rows = []
    for (t, r, seed), g in diagnose[diagnose["layer"] >= 0].groupby(["target", "regime", "seed"], sort=False):
        w = g.pivot_table(index="layer", columns="metric", values="value").sort_index()
        bands = {
            m: select_band(
                w["entropy"].to_numpy(),
                w[m].to_numpy(),
                method=ski.method,
                alpha=ski.alpha,
                s=ski.s,
                threshold=ski.threshold,
                max_band=ski.max_band,
            )["band"]
            for m in MEASURES
            if m in w
        }
        primary = bands.get("act_grad")
        rows.append(
            {
                "group": f"{t}-{r}-{seed}",
                "target": t,
                "regime": r,
                "seed": int(seed),
                **{m: " ".join(map(str, b)) for m, b in bands.items()},
                "all_agree": all(b == primary for b in bands.values()),
            }
        )
    return pd.DataFrame(rows)
