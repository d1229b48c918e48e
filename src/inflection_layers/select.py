"""Layer selection from SKI (saturation/knowledge index) scores: inflection layers and the LoRA band.

SKI(l) = a * (1 - H_l / max_j H_j) + (1 - a) * (1 - G_l / max_j G_j), with H the mean attention
entropy and G the activation-gradient norm ||dL/dh_l|| of layer l (arXiv 2511.00797). High SKI means
saturated attention and a suppressed gradient. Pure numpy functions, no I/O.
"""

from __future__ import annotations

import logging
import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from inflection_layers.artifacts import write_csv, write_json
from inflection_layers.config import REGIMES, Ski, load_params

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


def random_band(num_layers: int, size: int, seed: int) -> list[int]:
    """Equal-budget control: size distinct layers of [0, num_layers), uniform without replacement, sorted."""
    if not 1 <= size <= num_layers:
        raise ValueError(f"size must be in [1, num_layers={num_layers}], got {size}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_layers, size=size, replace=False))


def select_cell(layers: pd.DataFrame, p: Ski, seed: int) -> tuple[dict, pd.DataFrame]:
    """Band and equal-size random band of one cell from its tidy diagnose table (layer, metric, value).

    Uses mean attention entropy H and the activation-gradient norm G at each encoder layer's output
    (layers 0..L-1; the embeddings' output, layer -1, is not a candidate). Returns the selection
    JSON and a per-layer table (layer, entropy, act_grad, ski, in_band) for DVC plots.
    """
    wide = layers[layers["layer"] >= 0].pivot(index="layer", columns="metric", values="value").sort_index()
    h, g = wide["entropy"].to_numpy(), wide["act_grad"].to_numpy()
    sel = select_band(h, g, method=p.method, alpha=p.alpha, s=p.s, threshold=p.threshold, max_band=p.max_band)
    rand = random_band(len(h), len(sel["band"]), seed)
    table = pd.DataFrame({"layer": wide.index, "entropy": h, "act_grad": g, "ski": sel["scores"]})
    table["in_band"] = table["layer"].isin(sel["band"]).astype(int)
    result = {"num_layers": len(h), **sel, "band_size": len(sel["band"]), "random_band": rand, "params": vars(p)}
    return result, table


def main() -> None:
    """Parse the cell and paths dvc.yaml gives, validate `ski.*`, select, write the JSON and the table."""
    parser = argparse.ArgumentParser(description="Stage `select`: SKI scores and the LoRA band of one source model.")
    parser.add_argument("--regime", choices=REGIMES, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--layers", type=Path, required=True, help="tidy per-layer CSV from `diagnose`")
    parser.add_argument("--out", type=Path, required=True, help="selection JSON")
    parser.add_argument("--table", type=Path, required=True, help="per-layer CSV for DVC plots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = load_params().ski

    if not args.layers.is_file():
        raise FileNotFoundError(f"{args.layers}: missing; run `dvc repro diagnose` first")
    result, table = select_cell(pd.read_csv(args.layers), p, args.seed)
    cell = {"regime": args.regime, "seed": args.seed}
    write_json(args.out, {**cell, **result})
    write_csv(args.table, table.assign(**cell))


if __name__ == "__main__":
    main()
