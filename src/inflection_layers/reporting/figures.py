"""The report's figures: each a PNG (matplotlib, Agg) and a tidy CSV for DVC plots with one numeric x column
(``layer``, ``epoch`` or ``trainable_parameters``), ``value`` (y), ``series`` (the legend entry) and ``panel``
(the subplot), plus ``std`` where the value is a mean over seeds. :data:`FIGURES` names them; the file names
are stable. One colour per series, the same in every panel; log scales for parameter counts and gradients.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from inflection_layers.reporting import figure_data as D

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
    "intervene_gradient": (
        "layer",
        "Gradient norm per layer with attention temperature tau at the SKI band or at control bands (no training)",
        "activation-gradient norm (log)",
        True,
    ),
    "intervene_entropy": (
        "tau",
        "Manipulation check: entropy of the intervened layers against tau",
        "mean attention entropy (nats)",
        False,
    ),
    "anneal_gradient": (
        "step",
        "The lower layers' gradient while adapting: annealed temperature at the band vs selective LoRA",
        "gradient norm below the band (log)",
        True,
    ),
    "lazy_layers": (
        "layer",
        "Attention rank collapse beside entropy: rank / length and the heaviest column's mass per layer",
        "value (entropy in nats; rank and mass as shares)",
        False,
    ),
    "features": (
        "layer",
        "Sparse-autoencoder lens: before/after token cosine and excess FVU per unit of shift",
        "value (cosine; FVU per unit of shift)",
        False,
    ),
}
FLOOR = 1e-6
MARKERS = {"SKI band": "*", "complement": "s", "rgn": "^", "cka": "D", "random band": "o"}


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
        seen |= {k: v for k, v in zip(lab, h, strict=False) if k not in seen}
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
            "tau": "attention temperature tau",
            "step": "training step",
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
    for ax, panel in zip(axes.flat, panels, strict=False):
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
    for ax, panel in zip(axes.flat, panels, strict=False):
        d = tidy[tidy["panel"] == panel]
        crowd = d.groupby(
            np.round(np.log10(d["trainable_parameters"].clip(lower=1)), 1)
        ).cumcount()  # spread equal counts apart
        for r, j in zip(d.itertuples(index=False), crowd, strict=True):
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
    for ax, s in zip(axes.flat, sels, strict=False):
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
    for ax, panel in zip(axes.flat, panels, strict=False):
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


def write_all(out: Path, inputs: Any, acc: pd.DataFrame, bands: pd.DataFrame) -> list[tuple[str, str]]:
    """Write every figure's CSV and PNG into `out` (fig1's CSV keeps the baselines: the Vega template draws them as a
    dashed line); returns (stem, caption) in order."""
    fig1, base = D.accuracy_vs_params(acc, inputs.cells)
    data = {
        "fig1_accuracy_vs_params": fig1,
        "fig2_entropy": D.per_layer(inputs.diagnose, inputs.layers, "entropy"),
        "fig3_act_grad": D.per_layer(inputs.diagnose, inputs.layers, "act_grad"),
        "fig4_param_grad": D.per_layer(inputs.diagnose, inputs.layers, "param_grad"),
        "fig5_probes": D.probe_data(inputs.probes),
        "delta_cka": D.cka_data(inputs.cka),
        "ski": D.ski_data(inputs.selection),
        "selectors": D.selector_data(bands),
        "source_curves": D.curve_data(inputs.source),
        "random_bands": D.band_data(acc, bands),
        "intervene_gradient": D.intervene_gradient(inputs.intervene),
        "intervene_entropy": D.intervene_entropy(inputs.intervene),
        "anneal_gradient": D.anneal_gradient(inputs.curves, inputs.selection),
        "lazy_layers": D.lazy_layers(inputs.diagnose),
        "features": D.feature_layers(inputs.features),
    }
    draw = {
        "fig1_accuracy_vs_params": lambda d, png: plot_params(d, "fig1_accuracy_vs_params", png, base),
        "selectors": lambda d, png: plot_selectors(d, "selectors", png),
        "random_bands": lambda d, png: plot_bands(d, "random_bands", png),
    }
    for stem, d in data.items():
        rows = (
            pd.concat([d, base.assign(series="none (source model, 0 parameters)")])
            if stem == "fig1_accuracy_vs_params"
            else d
        )
        rows.to_csv(out / f"{stem}.csv", index=False)
        png = out / f"{stem}.png"
        if stem in draw:
            draw[stem](d, png)
        else:
            plot_lines(
                d, stem, png, marker_col="in_band" if stem == "ski" else None, ncols=5 if stem.startswith("fig") else 4
            )
    return [(stem, FIGURES[stem][1]) for stem in data]
