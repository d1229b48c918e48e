"""The tidy data of every figure: one numeric x column (``layer``, ``epoch``, ``step``, ``tau`` or
``trainable_parameters``), ``value`` (y), ``series`` (the legend entry), ``panel`` (the subplot) and ``std`` where
the value is a mean over seeds. Seeds, targets and strategies are rows, never columns, so every profile draws every
chart; :mod:`~inflection_layers.reporting.figures` draws them and writes them beside the PNGs for DVC plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PAPER_PANELS = ("shallow", "full", "lora_selective", "lora_all")
EMPTY = ["layer", "value", "std", "series", "panel"]


def layer_mean(tidy: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    d = (
        tidy[tidy["metric"] == metric].dropna(subset=["value"])
        if len(tidy)
        else pd.DataFrame(columns=["layer", "value", *keys])
    )
    return d.groupby([*keys, "layer"], as_index=False, sort=False)["value"].agg(value="mean", std="std")


def per_layer(diagnose: pd.DataFrame, layers: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Figures 2-4: panel '<target> / source' and '<target> / <strategy>' (the paper's four), series = regime."""
    src = layer_mean(diagnose, metric, ["target", "regime"]).assign(where="source")
    ad = layers[layers["strategy"].isin(PAPER_PANELS)] if len(layers) else layers
    ad = layer_mean(ad, metric, ["target", "regime", "strategy"]).rename(columns={"strategy": "where"})
    d = pd.concat([src, ad], ignore_index=True)
    if d.empty:
        return pd.DataFrame(columns=["layer", "value", "std", "series", "panel"])
    order = {w: i for i, w in enumerate(("source", *PAPER_PANELS))} | {
        t: i for i, t in enumerate(dict.fromkeys(d["target"]))
    }
    d = d.sort_values(["target", "where"], key=lambda c: c.map(order), kind="stable")
    return pd.DataFrame(
        {
            "layer": d["layer"],
            "value": d["value"],
            "std": d["std"],
            "series": d["regime"],
            "panel": d["target"] + " / " + d["where"],
        }
    )


def accuracy_vs_params(acc: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 1 data (validation, all sentences; one point per strategy family) and the `none` baselines."""
    a = acc[(acc["strategy"] == acc["family"]) & (acc["subset"] == "all") & (acc["split"] == "validation")]
    m = a.groupby(["target", "regime", "strategy"], as_index=False, sort=False)["accuracy"].agg(value="mean", std="std")
    p = (
        cells.groupby(["target", "regime", "family"], as_index=False)["trainable_parameters"]
        .mean()
        .rename(columns={"family": "strategy"})
    )
    m = m.merge(p, on=["target", "regime", "strategy"], how="left")
    m["panel"] = m["target"] + " / " + m["regime"]
    out = pd.DataFrame(
        {
            "trainable_parameters": m["trainable_parameters"],
            "value": 100 * m["value"],
            "std": 100 * m["std"],
            "series": m["strategy"],
            "panel": m["panel"],
        }
    )
    keep = out["trainable_parameters"] > 0
    return out[keep].reset_index(drop=True), out[~keep].reset_index(drop=True)


def cka_data(cka: pd.DataFrame) -> pd.DataFrame:
    d = cka[(cka["metric"] == "delta_cka") & (cka["layer"] >= 0)] if len(cka) else cka
    m = (
        layer_mean(d, "delta_cka", ["target", "regime", "strategy"])
        if len(d)
        else pd.DataFrame(columns=["target", "regime", "strategy", "layer", "value", "std"])
    )
    return pd.DataFrame(
        {
            "layer": m["layer"],
            "value": m["value"],
            "std": m["std"],
            "series": m["strategy"],
            "panel": m["target"] + " / " + m["regime"],
        }
    )


def probe_data(probes: pd.DataFrame) -> pd.DataFrame:
    """Figure 5: linear and MLP per regime; controls (shuffled labels, majority) averaged over regimes."""
    if probes.empty:
        return pd.DataFrame(columns=["layer", "value", "std", "series", "panel"])
    main = probes[probes["metric"].isin(["linear", "mlp"])].assign(series=lambda d: d["regime"] + " / " + d["metric"])
    ctrl = probes[~probes["metric"].isin(["linear", "mlp"])].assign(
        series=lambda d: d["metric"].str.replace("_", " ") + " (control)"
    )
    d = (
        pd.concat([main, ctrl])
        .groupby(["target", "strategy", "series", "layer"], as_index=False, sort=False)["value"]
        .agg(value="mean", std="std")
    )
    return pd.DataFrame(
        {
            "layer": d["layer"],
            "value": d["value"],
            "std": d["std"],
            "series": d["series"],
            "panel": d["target"] + " / " + d["strategy"],
        }
    )


def ski_data(selection: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "layer": l,
            "value": v,
            "in_band": int(l in r.band),
            "series": f"seed {r.seed}",
            "panel": f"{r.target} / {r.regime}",
        }
        for r in selection.itertuples()
        for l, v in enumerate(r.scores)
    ]
    return pd.DataFrame(rows, columns=["layer", "value", "in_band", "series", "panel"])


def selector_data(bands: pd.DataFrame) -> pd.DataFrame:
    """layer x group x selector: 1 if chosen; for the random draws, the share of draws choosing the layer."""
    if bands.empty:
        return pd.DataFrame(columns=["layer", "value", "series", "panel"])
    b = bands.assign(sel=bands["selector"].str.replace(r"_\d+$", "", regex=True))
    L = int(max(max((int(x) for x in s.split()), default=0) for s in b["layers"])) + 1
    rows = []
    for (group, sel), g in b.groupby(["group", "sel"], sort=False):
        for layer in range(L):
            rows.append(
                {
                    "layer": layer,
                    "value": float(np.mean([str(layer) in s.split() for s in g["layers"]])),
                    "series": sel,
                    "panel": group,
                }
            )
    return pd.DataFrame(rows)


def curve_data(source: dict[str, dict]) -> pd.DataFrame:
    rows = [
        {"epoch": c["epoch"], "value": c[k], "series": f"{name.split('-')[0]} / seed {name.split('-')[1]}", "panel": k}
        for name, j in source.items()
        for c in j.get("curve", [])
        for k in ("train_loss", "train_confidence", "dev_accuracy", "dev_loss")
        if c.get(k) is not None
    ]
    return pd.DataFrame(rows, columns=["epoch", "value", "series", "panel"])


def band_data(acc: pd.DataFrame, bands: pd.DataFrame) -> pd.DataFrame:
    """Per group: validation accuracy (%) and the band's mean layer of SKI, each random draw and the rivals."""
    a = acc[(acc["subset"] == "all") & (acc["split"] == "validation")]
    name = {
        "ski": ("lora_selective", "SKI band"),
        "complement": ("lora_complement", "complement"),
        "rgn": ("lora_rgn", "rgn"),
        "cka": ("lora_cka", "cka"),
    }
    rows = []
    for r in bands.itertuples():
        strategy, series = name.get(r.selector, (f"lora_{r.selector}", "random band"))
        hit = a[
            (a["target"] == r.target) & (a["regime"] == r.regime) & (a["seed"] == r.seed) & (a["strategy"] == strategy)
        ]
        if len(hit) and r.layers:
            rows.append(
                {
                    "layer": float(np.mean([int(x) for x in r.layers.split()])),
                    "value": 100 * hit["accuracy"].iloc[0],
                    "series": series,
                    "panel": r.group,
                }
            )
    return pd.DataFrame(rows, columns=["layer", "value", "series", "panel"])


def intervene_gradient(iv: pd.DataFrame) -> pd.DataFrame:
    """The gradient norm per layer with tau at the band and at the control bands (their mean), one line per tau;
    panels target / regime / placement; tau = 1 (the unperturbed model) in every panel."""
    g = iv[(iv["metric"] == "act_grad")].dropna(subset=["layer"]) if len(iv) else iv
    if g.empty:
        return pd.DataFrame(columns=EMPTY)
    g = g.assign(where=np.where(g["placement"].str.startswith("control"), "control bands", g["placement"]))
    base = g[g["placement"] == "none"]
    parts = [g[g["where"].isin(["band", "control bands"])]] + [base.assign(where=w) for w in ("band", "control bands")]
    d = (
        pd.concat(parts)
        .groupby(["target", "regime", "where", "tau", "layer"], as_index=False)["value"]
        .agg(value="mean", std="std")
    )
    return pd.DataFrame(
        {
            "layer": d["layer"],
            "value": d["value"],
            "std": d["std"],
            "series": "tau " + d["tau"].map("{:g}".format),
            "panel": d["target"] + " / " + d["regime"] + " / " + d["where"],
        }
    )


def intervene_entropy(iv: pd.DataFrame) -> pd.DataFrame:
    """The manipulation check: mean entropy over each placement's layers (the band, a control band, every layer)
    against tau; at tau = 1, the unperturbed model over the same layers. One line per placement (control bands
    averaged), panels target / regime."""
    e = iv[iv["metric"] == "entropy"].dropna(subset=["layer"]) if len(iv) else iv
    if e.empty:
        return pd.DataFrame(columns=["tau", "value", "std", "series", "panel"])
    key = ["target", "regime", "seed"]
    placed = e[e["placement"] != "none"][[*key, "placement", "band"]].drop_duplicates()
    out = []
    for p in placed.itertuples(index=False):
        layers = [int(x) for x in str(p.band).split()]
        mine = e[
            (e["target"] == p.target)
            & (e["regime"] == p.regime)
            & (e["seed"] == p.seed)
            & e["layer"].isin(layers)
            & e["placement"].isin([p.placement, "none"])
        ]
        for tau, g in mine.groupby("tau"):
            out.append(
                {
                    "tau": tau,
                    "value": g["value"].mean(),
                    "seed": p.seed,
                    "panel": f"{p.target} / {p.regime}",
                    "series": "control bands" if p.placement.startswith("control") else p.placement,
                }
            )
    d = pd.DataFrame(out).groupby(["panel", "series", "tau", "seed"], as_index=False)["value"].mean()
    d = d.groupby(["panel", "series", "tau"], as_index=False)["value"].agg(value="mean", std="std")
    return d[["tau", "value", "std", "series", "panel"]]


def anneal_gradient(curves: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """The lower layers' gradient norm (geometric mean over the layers below the band) against the training step, for
    the annealed cell and lora_selective; panels target / regime."""
    rows = []
    for g in selection.itertuples():
        cols = [f"act_grad_{l}" for l in range(-1, min(g.band))]
        c = (
            curves[
                (curves["target"] == g.target)
                & (curves["regime"] == g.regime)
                & (curves["seed"] == g.seed)
                & curves["strategy"].isin(["lora_selective", "lora_selective_anneal"])
            ]
            if len(curves)
            else curves
        )
        cols = [x for x in cols if x in c]
        if cols and len(c):
            rows.append(
                c.assign(value=np.exp(np.log(c[cols].clip(lower=1e-30)).mean(axis=1)))[
                    ["target", "regime", "strategy", "step", "value"]
                ]
            )
    if not rows:
        return pd.DataFrame(columns=["step", "value", "std", "series", "panel"])
    d = (
        pd.concat(rows)
        .groupby(["target", "regime", "strategy", "step"], as_index=False)["value"]
        .agg(value="mean", std="std")
    )
    return pd.DataFrame(
        {
            "step": d["step"],
            "value": d["value"],
            "std": d["std"],
            "series": d["strategy"],
            "panel": d["target"] + " / " + d["regime"],
        }
    )


LAZY = ("entropy", "attn_rank", "attn_rank_max", "column_mass", "column_mass_max")


def lazy_layers(diagnose: pd.DataFrame) -> pd.DataFrame:
    """Rank (mean and maximum over heads, as a share of the sentence length) and the heaviest column's mass per layer,
    beside entropy, of the source models; panels target / measure, one line per regime."""
    d = diagnose[diagnose["metric"].isin(LAZY) & (diagnose["layer"] >= 0)] if len(diagnose) else diagnose
    if d.empty:
        return pd.DataFrame(columns=EMPTY)
    m = d.groupby(["target", "metric", "regime", "layer"], as_index=False)["value"].agg(value="mean", std="std")
    return pd.DataFrame(
        {
            "layer": m["layer"],
            "value": m["value"],
            "std": m["std"],
            "series": m["regime"],
            "panel": m["target"] + " / " + m["metric"],
        }
    )


def feature_layers(features: pd.DataFrame) -> pd.DataFrame:
    """Before/after token cosine and the source SAE's excess FVU per unit of shift, per layer and strategy; panels
    target / measure / regime."""
    d = features[features["metric"].isin(["cosine", "excess_fvu_per_shift"])] if len(features) else features
    if d.empty:
        return pd.DataFrame(columns=EMPTY)
    m = d.groupby(["target", "metric", "regime", "strategy", "layer"], as_index=False)["value"].agg(
        value="mean", std="std"
    )
    return pd.DataFrame(
        {
            "layer": m["layer"],
            "value": m["value"],
            "std": m["std"],
            "series": m["strategy"],
            "panel": m["target"] + " / " + m["metric"] + " / " + m["regime"],
        }
    )
