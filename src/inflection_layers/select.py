"""Stage `select`: the LoRA band of one group by SKI, its controls, and the rival selectors.

SKI(l) = a * (1 - H_l / max_j H_j) + (1 - a) * (1 - G_l / max_j G_j), with H the mean attention
entropy and G the activation-gradient norm of layer l (arXiv 2511.00797). High SKI means saturated
attention and a suppressed gradient. The band: local maxima of SKI (or the paper's greedy rule),
widened by +-s, optionally capped. Beside it, at the band's size k, from the same diagnostic batches:
- the random bands (the control): `ski.random_draws` bands of size k, disjoint from the band and of its
  shape (contiguous if it is) where the depth allows; when it does not, the rule relaxes first the
  shape, then the disjointness (least overlap first), and each draw records what it is;
- the complement: the k layers outside the band with the lowest SKI (fewer when fewer are left);
- Auto-RGN (surgical fine-tuning, arXiv 2210.11466): the top k layers by relative gradient norm
  ||g|| / ||theta|| of the layer's parameters;
- representation change: the top k layers by 1 - CKA between the layer's input and output tokens.
Pure numpy functions, and a thin `main`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from inflection_layers.artifacts import read_csv, stage_args, write_csv, write_json
from inflection_layers.cells import REGIMES, TARGETS, Group
from inflection_layers.config import Ski, load_params
from inflection_layers.errors import InputError, run_main

logger = logging.getLogger(__name__)

METHODS = ("local_max", "greedy")


def _check_signal(x: np.ndarray, name: str) -> np.ndarray:
    """Return x as a float (L,) array; ValueError unless 1-D, L >= 1, finite and non-negative."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (L,), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must have at least one layer, got L = 0")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite, got {x.tolist()}")
    if np.any(x < 0):
        raise ValueError(f"{name} must be non-negative, got {x.tolist()}")
    return x


def _check_pair(entropy: np.ndarray, act_grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate both per-layer signals and require the same shape (L,)."""
    h, g = _check_signal(entropy, "entropy"), _check_signal(act_grad, "act_grad")
    if h.shape != g.shape:
        raise ValueError(f"entropy and act_grad must have the same shape, got {h.shape} and {g.shape}")
    return h, g


def _normalise(x: np.ndarray) -> np.ndarray:
    """x / max(x), shape (L,); all zeros when max(x) == 0 (an all-zero signal carries no ranking)."""
    top = x.max()
    return x / top if top > 0 else np.zeros_like(x)


def ski_scores(entropy: np.ndarray, act_grad: np.ndarray, alpha: float) -> np.ndarray:
    """SKI per layer, shape (L,), from entropy (L,) and act_grad (L,); alpha weights the entropy term.

    If a signal is all zero its normalised value is taken as 0 for every layer (so its term is 1 - 0).
    alpha = 1 uses the entropy only, alpha = 0 the gradient only.
    """
    h, g = _check_pair(entropy, act_grad)
    if not (np.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * (1.0 - _normalise(h)) + (1.0 - alpha) * (1.0 - _normalise(g))


def local_maxima(scores: np.ndarray) -> list[int]:
    """Indices of the local maxima of scores (L,), ascending.

    Rules: runs of equal consecutive values are treated as one layer (a plateau). A run is a maximum
    iff it is strictly higher than each existing neighbouring value (a missing neighbour at either end
    does not count against it); it is reported at its first (lowest) index. So a single layer is a
    maximum iff it is >= both neighbours and > at least one, and a plateau next to a higher value
    (a shoulder) is not. With no maximum (all scores equal, including L = 1) return [argmax] = [0].
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"scores must be a finite non-empty 1-D array, got {x.tolist()}")
    starts = [0] + [i for i in range(1, x.size) if x[i] != x[i - 1]]  # first index of each run
    values = [x[i] for i in starts]
    out = [
        starts[k]
        for k in range(len(starts))
        if len(starts) > 1
        and (k == 0 or values[k] > values[k - 1])
        and (k == len(starts) - 1 or values[k] > values[k + 1])
    ]
    return out if out else [int(np.argmax(x))]


def widen(centers: Iterable[int], s: int, num_layers: int) -> list[int]:
    """Sorted union of [c - s, c + s] over centers, clipped to [0, num_layers - 1]."""
    if s < 0:
        raise ValueError(f"s must be >= 0, got {s}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    band: set[int] = set()
    for c in centers:
        c = int(c)
        if not 0 <= c < num_layers:
            raise ValueError(f"center {c} is outside [0, {num_layers - 1}]")
        band.update(range(max(0, c - s), min(num_layers - 1, c + s) + 1))
    return sorted(band)


def cap_band(band: list[int], scores: np.ndarray, max_band: int | None) -> list[int]:
    """Keep at most max_band layers of band, the highest-scoring (ties: lower index first); sorted.

    scores has shape (L,); max_band None means no cap.
    """
    if max_band is not None and max_band < 1:
        raise ValueError(f"max_band must be >= 1 or None, got {max_band}")
    band = sorted({int(b) for b in band})
    if max_band is None or len(band) <= max_band:
        return band
    scores = np.asarray(scores, dtype=float)
    if band[0] < 0 or band[-1] >= scores.size:
        raise ValueError(f"band {band} has layers outside [0, {scores.size - 1}]")
    kept = sorted(band, key=lambda i: (-scores[i], i))[:max_band]
    logger.info("band capped from %d to %d layers: %s", len(band), max_band, sorted(kept))
    return sorted(kept)


def greedy_centers(entropy: np.ndarray, act_grad: np.ndarray, threshold: float) -> list[int]:
    """Paper's greedy centres: argmin entropy (lowest index on ties) and the first layer l with
    G_l / max G < threshold (if any; if max G == 0 every layer counts as below). Sorted, distinct.
    entropy and act_grad have shape (L,).
    """
    h, g = _check_pair(entropy, act_grad)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    centers = {int(np.argmin(h))}
    below = np.ones(g.size, dtype=bool) if g.max() == 0 else _normalise(g) < threshold
    if below.any():
        centers.add(int(np.argmax(below)))
    return sorted(centers)


def select_band(
    entropy: np.ndarray,
    act_grad: np.ndarray,
    *,
    method: str,
    alpha: float,
    s: int,
    threshold: float,
    max_band: int | None,
) -> dict:
    """LoRA band from entropy (L,) and act_grad (L,).

    Returns {"scores": SKI scores (L floats, for both methods), "candidates": centres,
    "band": sorted layers after widening by +-s and the max_band cap}.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    scores = ski_scores(entropy, act_grad, alpha)
    if method == "local_max":
        candidates = local_maxima(scores)
    else:
        candidates = greedy_centers(entropy, act_grad, threshold)
    band = cap_band(widen(candidates, s, scores.size), scores, max_band)
    logger.info("method=%s candidates=%s band=%s", method, candidates, band)
    return {"scores": [float(v) for v in scores], "candidates": candidates, "band": band}


def contiguous(band: list[int]) -> bool:
    """Whether a non-empty band is one run of consecutive layers."""
    return bool(band) and max(band) - min(band) + 1 == len(band)


def random_bands(num_layers: int, band: list[int], draws: int, rng: np.random.Generator, max_enumerate: int = 200_000) -> list[dict]:
    """`draws` distinct random bands of len(band) layers, never the band itself, best-admissible first.

    Preference tiers: (overlap with the band, shape differs): disjoint and of the band's shape first,
    then disjoint of any shape, then by increasing overlap. Within a tier the order is uniformly random.
    Returns [{"layers", "overlap", "contiguous", "tier"}]; fewer than `draws` only when fewer bands exist.
    """
    k, chosen = len(band), set(band)
    if not 1 <= k <= num_layers:
        raise ValueError(f"band size must be in [1, {num_layers}], got {k}")
    shape = contiguous(band)
    if math.comb(num_layers, k) <= max_enumerate:
        combos = list(itertools.combinations(range(num_layers), k))
    else:  # too many to list: every contiguous window, and samples from outside the band and from all layers
        rest = [i for i in range(num_layers) if i not in chosen]
        windows = [tuple(range(a, a + k)) for a in range(num_layers - k + 1)]
        outside = [tuple(sorted(rng.choice(rest, k, replace=False).tolist())) for _ in range(50 * draws)] if len(rest) >= k else []
        anywhere = [tuple(sorted(rng.choice(num_layers, k, replace=False).tolist())) for _ in range(50 * draws)]
        combos = sorted(set(windows + outside + anywhere))
    combos = [c for c in combos if set(c) != chosen]
    keys = [(len(chosen & set(c)), contiguous(list(c)) != shape) for c in combos]
    order = rng.permutation(len(combos))
    ranked = sorted(order, key=lambda i: keys[i])[:draws]
    out = []
    for i in ranked:
        overlap, other_shape = keys[i]
        tier = ("disjoint" if overlap == 0 else f"overlaps the band in {overlap}") + (", other shape" if other_shape else ", same shape")
        out.append({"layers": [int(l) for l in combos[i]], "overlap": overlap, "contiguous": contiguous(list(combos[i])), "tier": tier})
    return out


def top_k(values: np.ndarray, k: int) -> list[int]:
    """The k layers with the highest values (ties: lower index first), sorted; values (L,) finite."""
    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values must be finite, got {v.tolist()}")
    return sorted(sorted(range(v.size), key=lambda i: (-v[i], i))[:k])


def complement(band: list[int], scores: np.ndarray) -> list[int]:
    """The len(band) layers outside the band with the lowest SKI (ties: lower index), or all that are left."""
    rest = [i for i in range(len(scores)) if i not in set(band)]
    return sorted(sorted(rest, key=lambda i: (scores[i], i))[: len(band)])


def draw_rng(group: Group) -> np.random.Generator:
    """The random bands' generator: a different stream per seed, regime and target (never reused across regimes)."""
    return np.random.default_rng([group.seed, REGIMES.index(group.regime), TARGETS.index(group.target)])


def select_group(layers: pd.DataFrame, p: Ski, group: Group, source: str = "the diagnose table") -> tuple[dict, pd.DataFrame]:
    """Every band of one group from its tidy diagnose table (layer, metric, value).

    Uses the encoder layers 0..L-1 (the embeddings' output, layer -1, is not a candidate). Returns
    the selection JSON and a per-layer table (layer, <each signal>, ski, in_<each band>) for DVC plots.
    """
    wide = layers[layers["layer"] >= 0].pivot(index="layer", columns="metric", values="value").sort_index()
    missing = {"entropy", "act_grad", "rgn", "io_change"} - set(wide.columns)
    if missing:
        raise InputError(f"{source} lacks the metrics {sorted(missing)}; rerun `dvc repro diagnose@{group.name}`")
    h, g = wide["entropy"].to_numpy(), wide["act_grad"].to_numpy()
    sel = select_band(h, g, method=p.method, alpha=p.alpha, s=p.s, threshold=p.threshold, max_band=p.max_band)
    k, L = len(sel["band"]), len(h)
    bands = {
        "band": sel["band"],
        "complement": complement(sel["band"], np.asarray(sel["scores"])),
        "rgn": top_k(wide["rgn"].to_numpy(), k),
        "cka": top_k(wide["io_change"].to_numpy(), k),
    }
    rand = random_bands(L, sel["band"], p.random_draws, draw_rng(group))
    table = pd.DataFrame({"layer": wide.index, "entropy": h, "act_grad": g, "rgn": wide["rgn"].to_numpy(),
                          "io_change": wide["io_change"].to_numpy(), "ski": sel["scores"]})
    for name, b in bands.items():
        table[f"in_{name}"] = table["layer"].isin(b).astype(int)
    result = {"num_layers": L, "scores": sel["scores"], "candidates": sel["candidates"], "band_size": k, **bands,
              "random": rand, "random_disjoint": sum(r["overlap"] == 0 for r in rand), "params": vars(p)}
    return result, table


def main() -> None:
    """Parse the group and paths dvc.yaml gives, validate `ski.*`, select, write the JSON and the table."""
    args = stage_args("Stage `select`: the SKI band, its controls and the rival selectors of one group.", {
        "group": "<target>-<regime>-<seed>, e.g. rt-over-42",
        "layers": "tidy per-layer CSV from `diagnose`",
        "out": "selection JSON",
        "table": "per-layer CSV for DVC plots",
    })
    p = load_params().ski
    group = args.group
    result, table = select_group(read_csv(args.layers, ["layer", "metric", "value"]), p, group, str(args.layers))
    key = {"target": group.target, "regime": group.regime, "seed": group.seed}
    write_json(args.out, {**key, **result})
    write_csv(args.table, table.assign(**key))
    logger.info("%s: band %s, complement %s, rgn %s, cka %s, random %s (%d disjoint)", group.name, result["band"], result["complement"],
                result["rgn"], result["cka"], [r["layers"] for r in result["random"]], result["random_disjoint"])


if __name__ == "__main__":
    run_main(main)
