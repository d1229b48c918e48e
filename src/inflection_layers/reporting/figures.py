"""The report's figures: each a PNG (matplotlib, Agg) and a tidy CSV for DVC plots with one numeric x column
(``layer``, ``epoch`` or ``trainable_parameters``), ``value`` (y), ``series`` (the legend entry) and ``panel``
(the subplot), plus ``std`` where the value is a mean over seeds. :data:`FIGURES` names them; the file names
are stable. One colour per series, the same in every panel; log scales for parameter counts and gradients.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

DPI = 120
# stem -> (x column, caption, y label, log y)
FIGURES = {
    "fig1_accuracy_vs_params": (
        "trainable_parameters",
        "Accuracy vs trainable parameters (paper Figure 1)",
        "validation accuracy (%, mean ± std over seeds)",
        False,
    ),
    "fig2_entropy": (
        "layer",
        "Attention entropy per layer (paper Figure 2): source models and adaptation",
        "attention entropy (nats)",
        False,
    ),
    "fig3_act_grad": (
        "layer",
        "Activation-gradient norm per layer (paper Figure 3)",
        "activation-gradient norm ‖∂L/∂h‖ (log)",
        True,
    ),
    "fig4_param_grad": (
        "layer",
        "Parameter-gradient norm per layer (paper Figure 4), trainable layers",
        "parameter-gradient norm (log)",
        True,
    ),
    "fig5_probes": (
        "layer",
        "Probe accuracy per layer with controls (paper Figure 5)",
        "held-out probe accuracy (fraction)",
        False,
    ),
    "delta_cka": (
        "layer",
        "Representation change per layer: Δ-CKA = 1 − CKA against the source model",
        "Δ-CKA (1 − CKA, log; ≤ 1e-6 drawn at 1e-6)",
        True,
    ),
    "ski": ("layer", "SKI per layer; filled markers: the selected band", "SKI score (unitless, 0-1)", False),
    "selectors": ("layer", "Layers chosen by each selector (random: share of draws)", "group", False),
    "source_curves": (
        "epoch",
        "Source training on SST-2: UNDER vs OVER per epoch",
        "value (loss in nats; confidence, accuracy as fractions)",
        False,
    ),
    "random_bands": (
        "layer",
        "Accuracy of the SKI band against random bands and rivals of its size (x: the band's mean layer)",
        "validation accuracy (%)",
        False,
    ),
}
FLOOR = 1e-6
MARKERS = {"SKI band": "*", "complement": "s", "rgn": "^", "cka": "D", "random band": "o"}
PAPER_PANELS = ("shallow", "full", "lora_selective", "lora_all")


def colours(series: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(series)}


def log_axis(ax, values: pd.Series) -> None:
    """Log y; within less than a decade, a few plain ticks ('0.00018') instead of unreadable minor labels."""
    ax.set_yscale("log")
    v = values[values > 0]
    if len(v) and v.max() / v.min() < 10:
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:.3g}"))
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _grid(n: int, ncols: int = 4, w: float = 3.6, h: float = 2.9):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 1.5, h * nrows + 1.2), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _finish(fig, axes, stem: str, path: Path, xlabel: str | None = None) -> None:
    x, caption, ylabel, _ = FIGURES[stem]
    seen: dict = {}
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        seen |= {k: v for k, v in zip(lab, h) if k not in seen}
    width = fig.get_figwidth()
    right = 1 - (0.065 * max((len(k) for k in seen), default=0) + 0.5) / width  # room for the legend, in inches
    fig.legend(
        seen.values(), seen.keys(), loc="center left", bbox_to_anchor=(right + 0.005, 0.5), fontsize=8, frameon=False
    )
    fig.supxlabel(
        xlabel
        or {
            "layer": "encoder layer (0 = first; -1 = embeddings)",
            "epoch": "SST-2 epoch",
            "trainable_parameters": "trainable parameters (count, log scale)",
        }[x],
        fontsize=9,
        x=(1.2 / width + right) / 2,
    )
    fig.supylabel(ylabel, fontsize=9, x=0.12 / width)
    fig.suptitle(caption, fontsize=11)
    one = axes.shape[0] == 1
    fig.subplots_adjust(
        left=1.2 / width, right=right, bottom=0.17 if one else 0.1, top=0.83 if one else 0.88, wspace=0.3, hspace=0.45
    )
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_lines(tidy: pd.DataFrame, stem: str, path: Path, marker_col: str | None = None, ncols: int = 4) -> None:
    """Generic: one panel per `panel`, one line per `series` (mean, +-std band when `std` is there)."""
    x, _, _, logy = FIGURES[stem]
    panels = list(dict.fromkeys(tidy["panel"])) or ["(no data)"]
    col = colours(list(dict.fromkeys(tidy["series"])))
    fig, axes = _grid(len(panels), ncols)
    for ax, panel in zip(axes.flat, panels):
        d = tidy[tidy["panel"] == panel]
        for s, g in d.groupby("series", sort=False):
            g = g.sort_values(x)
            y = g["value"].clip(lower=FLOOR) if logy else g["value"]
            ax.plot(g[x], y, color=col[s], lw=1.4, marker="o" if marker_col is None else None, ms=3, label=s)
            if "std" in g and g["std"].notna().any() and not logy:
                ax.fill_between(
                    g[x],
                    g["value"] - g["std"].fillna(0),
                    g["value"] + g["std"].fillna(0),
                    color=col[s],
                    alpha=0.15,
                    lw=0,
                )
            if marker_col:
                filled = g[marker_col].astype(bool).to_numpy()
                ax.scatter(
                    g[x], y, s=26, zorder=3, edgecolors=[col[s]], facecolors=[col[s] if f else "white" for f in filled]
                )
        if d.empty:
            ax.text(0.5, 0.5, "no data in this profile", ha="center", va="center", transform=ax.transAxes, color="grey")
        if logy and not d.empty and (d["value"] > 0).any():
            log_axis(ax, d["value"])
        if x in ("layer", "epoch") and not d.empty:
            ax.set_xticks(sorted(d[x].unique()))
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, axes, stem, path)


def plot_params(tidy: pd.DataFrame, stem: str, path: Path, baseline: pd.DataFrame) -> None:
    """Figure 1: accuracy (mean +- std) against trainable parameters (log x); the unadapted model as a dashed line."""
    panels = list(dict.fromkeys(tidy["panel"])) or ["(no data)"]
    col = colours(list(dict.fromkeys(tidy["series"])))
    fig, axes = _grid(len(panels), 2, w=4.6, h=3.4)
    for ax, panel in zip(axes.flat, panels):
        d = tidy[tidy["panel"] == panel]
        crowd = d.groupby(
            np.round(np.log10(d["trainable_parameters"].clip(lower=1)), 1)
        ).cumcount()  # spread equal counts apart
        for (_, r), j in zip(d.iterrows(), crowd):
            r = types.SimpleNamespace(**r)
            ax.errorbar(
                r.trainable_parameters * 1.12**j,
                r.value,
                yerr=0 if pd.isna(r.std) else r.std,
                fmt="o",
                color=col[r.series],
                ms=6,
                capsize=3,
                label=r.series,
            )
        b = baseline[baseline["panel"] == panel]
        if len(b):
            ax.axhline(b["value"].iloc[0], color="grey", ls="--", lw=1, label="none (source model, 0 parameters)")
        ax.set_xscale("log")
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, axes, stem, path)


def plot_selectors(tidy: pd.DataFrame, stem: str, path: Path) -> None:
    """Heat map per selector: groups (rows) x layers (columns), shade = chosen (share of draws for random)."""
    sels = list(dict.fromkeys(tidy["series"])) or ["(none)"]
    groups = list(dict.fromkeys(tidy["panel"]))
    layers = sorted(tidy["layer"].unique()) if len(tidy) else [0]
    fig, axes = plt.subplots(
        1,
        len(sels),
        figsize=(1.2 + 0.35 * len(layers) * len(sels) + 1.2 * len(sels), 1.4 + 0.3 * len(groups)),
        squeeze=False,
        sharey=True,
    )
    for ax, s in zip(axes.flat, sels):
        m = (
            tidy[tidy["series"] == s]
            .pivot_table(index="panel", columns="layer", values="value")
            .reindex(index=groups, columns=layers)
        )
        im = ax.imshow(m.to_numpy(dtype=float), vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.set_title(s, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="chosen (1) / share of random draws")
    fig.supxlabel("encoder layer", fontsize=9, y=-0.02)
    axes[0, 0].set_ylabel("group (target-regime-seed)", fontsize=8)
    fig.suptitle(FIGURES[stem][1], fontsize=11, y=1.0 + 0.3 / (1.4 + 0.3 * len(groups)))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_bands(tidy: pd.DataFrame, stem: str, path: Path) -> None:
    """Per group: accuracy against the band's mean layer, SKI highlighted."""
    panels = list(dict.fromkeys(tidy["panel"])) or ["(no data)"]
    col = colours(list(dict.fromkeys(tidy["series"])))
    fig, axes = _grid(len(panels), 4, w=3.2, h=2.7)
    for ax, panel in zip(axes.flat, panels):
        for s, g in tidy[tidy["panel"] == panel].groupby("series", sort=False):
            ax.scatter(
                g["layer"],
                g["value"],
                color=col[s],
                s=110 if s == "SKI band" else 36,
                marker=MARKERS.get(s, "o"),
                label=s,
                zorder=4 if s == "SKI band" else 3,
                alpha=0.85,
            )
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, axes, stem, path, xlabel="mean layer of the band (encoder layer)")


# --- tidy data ---


def layer_mean(tidy: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    d = (
        tidy[tidy["metric"] == metric].dropna(subset=["value"])
        if len(tidy)
        else pd.DataFrame(columns=["layer", "value", *keys])
    )
    return d.groupby(keys + ["layer"], as_index=False, sort=False)["value"].agg(value="mean", std="std")


def per_layer(diagnose: pd.DataFrame, layers: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Figures 2-4: panel '<target> / source' and '<target> / <strategy>' (the paper's four), series = regime."""
    src = layer_mean(diagnose, metric, ["target", "regime"]).assign(where="source")
    ad = layers[layers["strategy"].isin(PAPER_PANELS)] if len(layers) else layers
    ad = layer_mean(ad, metric, ["target", "regime", "strategy"]).rename(columns={"strategy": "where"})
    d = pd.concat([src, ad], ignore_index=True)
    if d.empty:
        return pd.DataFrame(columns=["layer", "value", "std", "series", "panel"])
    order = {w: i for i, w in enumerate(("source",) + PAPER_PANELS)} | {
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


def write_all(out: Path, acc, cells, diagnose, layers, cka, probes, selection, bands, source) -> list[tuple[str, str]]:
    """Write every figure's CSV and PNG into `out`; returns (stem, caption) in order."""
    fig1, base = accuracy_vs_params(acc, cells)
    data = {
        "fig1_accuracy_vs_params": fig1,
        "fig2_entropy": per_layer(diagnose, layers, "entropy"),
        "fig3_act_grad": per_layer(diagnose, layers, "act_grad"),
        "fig4_param_grad": per_layer(diagnose, layers, "param_grad"),
        "fig5_probes": probe_data(probes),
        "delta_cka": cka_data(cka),
        "ski": ski_data(selection),
        "selectors": selector_data(bands),
        "source_curves": curve_data(source),
        "random_bands": band_data(acc, bands),
    }
    for stem, d in data.items():
        rows = (
            pd.concat([d, base.assign(series="none (source model, 0 parameters)")])
            if stem == "fig1_accuracy_vs_params"
            else d
        )
        rows.to_csv(
            out / f"{stem}.csv", index=False
        )  # fig1's CSV keeps the baselines: the Vega template draws them as a dashed line
        png = out / f"{stem}.png"
        if stem == "fig1_accuracy_vs_params":
            plot_params(d, stem, png, base)
        elif stem == "selectors":
            plot_selectors(d, stem, png)
        elif stem == "random_bands":
            plot_bands(d, stem, png)
        else:
            plot_lines(
                d, stem, png, marker_col="in_band" if stem == "ski" else None, ncols=5 if stem.startswith("fig") else 4
            )
    return [(stem, FIGURES[stem][1]) for stem in data]
