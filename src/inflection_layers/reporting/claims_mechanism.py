"""Our claims about the mechanism: the attention-temperature intervention (O4 diagnostic, O5 adaptation, O6 annealing)
and the two other lenses on the same layers (O7 attention rank against entropy, O8 and O9 sparse-autoencoder
features). Each part's rule and smallest effect of interest come from the decision table.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from inflection_layers.reporting.claims_base import (
    REGIMES,
    SEL,
    Evidence,
    arm,
    claim_row,
    context_part,
    has,
    missing_part,
    paired,
    part,
    primary,
)
from inflection_layers.reporting.stats import partial_spearman


def gradient_ratio(iv: pd.DataFrame) -> pd.DataFrame:
    """Per (regime, seed, placement, tau): log(activation-gradient norm at the embeddings' output / at the classifier's
    input, the last layer's first token; with the primary measure that is the last layer's norm)."""
    g = iv[iv["metric"] == "act_grad"].dropna(subset=["layer"])
    top = g.groupby(["regime", "seed", "placement", "tau"])["layer"].transform("max")
    emb = g[g["layer"] == -1].set_index(["regime", "seed", "placement", "tau"])["value"]
    last = g[g["layer"] == top].set_index(["regime", "seed", "placement", "tau"])["value"]
    return np.log(emb / last).rename("log_ratio").reset_index()


def rises(ratio: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Per (regime, seed, placement): the log ratio at `tau` minus the unperturbed model's (tau = 1)."""
    base = ratio[ratio["placement"] == "none"].set_index(["regime", "seed"])["log_ratio"]
    at = ratio[np.isclose(ratio["tau"], tau) & (ratio["placement"] != "none")]
    return at.assign(
        rise=at["log_ratio"].to_numpy() - base.reindex(pd.MultiIndex.from_frame(at[["regime", "seed"]])).to_numpy()
    )


O4_PAPER = "n/a (the paper calls for this experiment)"


def of_regime(s: pd.Series, regime: str) -> pd.Series:
    """The seed-indexed values of one regime of a (regime, seed)-indexed Series (empty without that regime)."""
    return s.xs(regime, level="regime") if regime in s.index.get_level_values("regime") else pd.Series(dtype=float)


def o4_parts(ev: Evidence, target: str, iv: pd.DataFrame, tau: float) -> list[dict]:
    """O4's primary parts: the rise at the band under OVER, that rise over minus under, and band minus control."""
    r = rises(gradient_ratio(iv), tau)
    band = r[r["placement"] == "band"].set_index(["regime", "seed"])["rise"]
    control = r[r["placement"].str.startswith("control")].groupby(["regime", "seed"])["rise"].mean()
    over = of_regime(band, "over")
    specs = [
        ("band", f"over: log gradient ratio at tau {tau:g} on the band minus at tau 1", over),
        ("over-under", "that rise, over minus under", paired(over, of_regime(band, "under"))),
        (
            "band-control",
            "over: that rise at the band minus the control bands' mean",
            paired(over, of_regime(control, "over")),
        ),
    ]
    return [part(ev, "O4", "primary", key, target, label, x, unit="log ratio") for key, label, x in specs]


def o4_tau_context(target: str, iv: pd.DataFrame) -> list[dict]:
    """O4's context: under OVER, the rise at the band with every temperature tried."""
    out = []
    for t in sorted(set(iv["tau"]) - {1.0}):
        x = rises(gradient_ratio(iv), t)
        b = x[(x["placement"] == "band") & (x["regime"] == "over")]["rise"]
        label, text = f"over: rise at the band with tau {t:g}", f"{math.exp(b.mean()):.3g}x (mean over seeds)"
        out.append(context_part("O4", target, label, text, math.exp(b.mean()), "ratio"))
    return out


def o4(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """O4: softening attention at the SKI band raises the gradient reaching the embeddings relative to the
    classifier's input (the ratio cancels the change of the loss); more under OVER than UNDER; more than at
    control bands."""
    tau = ev.params.intervene.adapt_temperature
    text = (
        f"softening attention at the SKI band (tau = {tau:g}) raises the gradient below it; more under OVER, "
        "and more than at control bands"
    )
    iv = ev.intervene[ev.intervene["target"] == target] if len(ev.intervene) else ev.intervene
    if iv.empty or not np.isclose(iv["tau"], tau).any():
        why = f"no intervention at tau = {tau:g} in this profile"
        parts = [missing_part(ev, "O4", "primary", k, target, k, why) for k in ("band", "over-under", "band-control")]
    else:
        parts = o4_parts(ev, target, iv, tau) + o4_tau_context(target, iv)
    return [claim_row(ev, "O4", "primary", target, text, "ours", O4_PAPER, parts, "ours")], parts


def o5(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """O5: under OVER, LoRA at the band with the band softened adapts better than without, and than softening a
    control band."""
    acc, parts = primary(ev.acc, target), []
    text = (
        "under OVER, selective LoRA with softened attention at the band adapts better than without it and than "
        "with a control band softened"
    )
    for rival in (SEL, "lora_selective_tau_ctrl"):
        label = f"over: lora_selective_tau - {rival}"
        ok = has(acc, "lora_selective_tau", ("over",)) and has(acc, rival, ("over",))
        parts.append(
            part(
                ev,
                "O5",
                "primary",
                rival,
                target,
                label,
                paired(arm(acc, "over", "lora_selective_tau"), arm(acc, "over", rival)),
            )
            if ok
            else missing_part(ev, "O5", "primary", rival, target, label, "the profile has no intervention cells")
        )
    return [claim_row(ev, "O5", "primary", target, text, "ours", "n/a", parts, "ours")], parts


def lower_gradients(curves: pd.DataFrame, selection: pd.DataFrame, strategy: str, window: int) -> pd.Series:
    """Per (regime, seed): the mean over diagnostic steps inside the window of the mean log gradient norm of the layers
    below the SKI band (the embeddings' output included)."""
    out = {}
    for g in selection.itertuples():
        c = curves[
            (curves["strategy"] == strategy)
            & (curves["regime"] == g.regime)
            & (curves["seed"] == g.seed)
            & (curves["step"] < window)
        ]
        cols = [f"act_grad_{l}" for l in range(-1, min(g.band)) if f"act_grad_{l}" in c]
        if len(c) and cols:
            out[(g.regime, int(g.seed))] = float(np.log(c[cols].clip(lower=1e-30)).mean(axis=1).mean())
    return pd.Series(out, dtype=float)


def o6(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """O6: annealing the band's temperature (the paper's debiasing phase) recovers the lower layers' gradients inside
    the window, and the final accuracy is not worse than without it."""
    acc, parts = primary(ev.acc, target), []
    text = (
        "an annealed temperature at the band raises the lower layers' gradients during the window, at no cost in "
        "final accuracy"
    )
    sel = ev.selection[ev.selection["target"] == target] if len(ev.selection) else ev.selection
    window = ev.params.intervene.window(ev.params.finetune.steps)
    cur = ev.curves[ev.curves["target"] == target] if len(ev.curves) else ev.curves
    anneal, base = (
        lower_gradients(cur, sel, s, window) if len(cur) else pd.Series(dtype=float)
        for s in ("lora_selective_anneal", SEL)
    )
    for r in REGIMES:
        a = anneal[anneal.index.get_level_values(0) == r].droplevel(0) if len(anneal) else anneal
        b = base[base.index.get_level_values(0) == r].droplevel(0) if len(base) else base
        label = f"{r}: lower layers' log gradient in the window, anneal - selective"
        parts.append(
            part(ev, "O6", "primary", "gradients", target, label, paired(a, b), unit="log")
            if len(a) and len(b)
            else missing_part(
                ev,
                "O6",
                "primary",
                "gradients",
                target,
                label,
                "no adaptation diagnostics below the band in the window",
            )
        )
        label = f"{r}: final accuracy, anneal - selective"
        ok = has(acc, "lora_selective_anneal", (r,)) and has(acc, SEL, (r,))
        parts.append(
            part(
                ev,
                "O6",
                "primary",
                "accuracy",
                target,
                label,
                paired(arm(acc, r, "lora_selective_anneal"), arm(acc, r, SEL)),
            )
            if ok
            else missing_part(ev, "O6", "primary", "accuracy", target, label, "the profile has no annealed cells")
        )
    return [claim_row(ev, "O6", "primary", target, text, "ours", "n/a (the paper's future work)", parts, "ours")], parts


def o7_rho(heads: pd.DataFrame, regime: str) -> pd.Series | pd.DataFrame:
    """Per seed of one regime: the partial Spearman rho of entropy and rank over heads, given column mass."""
    d = heads[heads["regime"] == regime] if len(heads) else heads
    return (
        pd.Series(
            {s: partial_spearman(g["entropy"], g["attn_rank"], g["column_mass"]) for s, g in d.groupby("seed")},
            dtype=float,
        )
        if len(d)
        else d
    )


def o7_both_lower(target: str, heads: pd.DataFrame) -> list[dict]:
    """O7's context: the layers where OVER lowers both the mean entropy and the mean rank (with both regimes)."""
    if not (len(heads) and set(REGIMES) <= set(heads["regime"])):
        return []
    m = heads.groupby(["regime", "layer"])[["entropy", "attn_rank"]].mean()
    both = [
        int(l)
        for l in m.loc["over"].index
        if (m.loc["over", "entropy"][l] < m.loc["under", "entropy"][l])
        and (m.loc["over", "attn_rank"][l] < m.loc["under", "attn_rank"][l])
    ]
    label = "layers where OVER lowers both entropy and rank"
    return [context_part("O7", target, label, f"{both or 'none'}", float(len(both)), "layers")]


def o7(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """O7: attention entropy and rank are related, either way: Spearman's rho over heads, partial on the heaviest
    column's mass, per source model; context: where OVER lowers both."""
    h = ev.heads[ev.heads["target"] == target] if len(ev.heads) else ev.heads
    text = "attention entropy and attention rank are related across heads (either way), beyond the attention sink"
    parts = []
    for r in REGIMES:
        label = f"{r}: partial Spearman rho of entropy and rank over heads (given column mass)"
        rho = o7_rho(h, r)
        parts.append(
            part(ev, "O7", "primary", r, target, label, rho, unit="rho")
            if len(rho)
            else missing_part(ev, "O7", "primary", r, target, label, "no per-head table in this profile")
        )
    parts += o7_both_lower(target, h)
    paper_value = "n/a (a reading of the paper; Sanyal et al. measured decoders)"
    return [claim_row(ev, "O7", "primary", target, text, "ours", paper_value, parts, "ours")], parts


def o8(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """O8: with full fine-tuning, the before/after similarity of token states falls with depth (Nadipalli's profile)."""
    f = (
        ev.features[
            (ev.features["target"] == target)
            & (ev.features["strategy"] == "full")
            & (ev.features["metric"] == "cosine")
        ]
        if len(ev.features)
        else ev.features
    )
    text = "full fine-tuning changes later layers more: the before/after similarity of token states falls with depth"
    parts = []
    for r in REGIMES:
        label = f"{r}: slope of the token cosine against depth, full"
        d = f[f["regime"] == r] if len(f) else f
        slopes = (
            pd.Series(
                {s: float(np.polyfit(g["layer"], g["value"], 1)[0]) for s, g in d.groupby("seed") if len(g) > 1},
                dtype=float,
            )
            if len(d)
            else d
        )
        parts.append(
            part(ev, "O8", "primary", r, target, label, slopes, unit="cosine per layer")
            if len(slopes)
            else missing_part(ev, "O8", "primary", r, target, label, "no features of full cells in this profile")
        )
    return [
        claim_row(ev, "O8", "primary", target, text, "ours", "n/a (Nadipalli, arXiv 2502.16722)", parts, "ours")
    ], parts


def o9(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """O9: at the SKI band's layers, selective LoRA moves activations off the source dictionary (excess FVU per unit of
    shift) more than LoRA on every layer does at the same layers."""
    f = (
        ev.features[(ev.features["target"] == target) & (ev.features["metric"] == "excess_fvu_per_shift")]
        if len(ev.features)
        else ev.features
    )
    sel = ev.selection[ev.selection["target"] == target] if len(ev.selection) else ev.selection
    text = (
        "at the SKI band, selective LoRA moves off the source's dictionary more than LoRA everywhere does "
        "(new features, not recombination)"
    )
    parts = []
    for r in REGIMES:
        label = f"{r}: excess FVU per unit of shift at the band, selective - lora_all"
        values = {}
        for g in sel[sel["regime"] == r].itertuples() if len(sel) else []:
            at = f[(f["regime"] == r) & (f["seed"] == g.seed) & f["layer"].isin(g.band)] if len(f) else f
            a, b = (at[at["strategy"] == s]["value"].mean() for s in (SEL, "lora_all"))
            values[int(g.seed)] = a - b
        x = pd.Series(values, dtype=float).dropna()
        parts.append(
            part(ev, "O9", "primary", r, target, label, x, unit="FVU per unit shift")
            if len(x)
            else missing_part(ev, "O9", "primary", r, target, label, "no features of the LoRA cells in this profile")
        )
    return [claim_row(ev, "O9", "primary", target, text, "ours", "n/a", parts, "ours")], parts
