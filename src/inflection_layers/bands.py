"""Layer selection, pure numpy: SKI, the band it picks, and the bands it is compared with.

SKI(l) = a * (1 - H_l / max_j H_j) + (1 - a) * (1 - G_l / max_j G_j), with H the mean attention
entropy and G the activation-gradient norm of layer l (arXiv 2511.00797). High SKI means saturated
attention and a suppressed gradient. The band: local maxima of SKI (or the paper's greedy rule),
widened by +-s, optionally capped. At the band's size k:
- random bands (the control): drawn uniformly from every other band of size k, overlap allowed;
- the top k layers (the naive choice);
- the complement: the k layers outside the band with the lowest SKI;
- Auto-RGN (surgical fine-tuning, arXiv 2210.11466) and representation change: :func:`top_k` of their signals.
Every function is pure and tested with a table of cases (tests/test_bands.py).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable

import numpy as np

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


def random_bands(
    num_layers: int, band: list[int], draws: int | None, rng: np.random.Generator, max_enumerate: int = 1_000_000
) -> list[dict]:
    """Random bands of len(band) layers, drawn uniformly without replacement from every such band but the band itself.

    Overlap with the band is allowed, so the draws have the depth distribution of all bands of that size (no
    depth confound against the band). `draws` None: every such band, in layer order. Returns
    [{"layers", "overlap", "contiguous", "mean_layer"}]; fewer than `draws` only when fewer bands exist.
    """
    k, chosen = len(band), tuple(sorted(band))
    if not 1 <= k <= num_layers:
        raise ValueError(f"band size must be in [1, {num_layers}], got {k}")
    total = math.comb(num_layers, k) - 1
    if draws is not None and draws < 1:
        raise ValueError(f"draws must be >= 1 or None (every band), got {draws}")
    if total > max_enumerate:  # too many to list: rejection sampling of distinct bands
        if draws is None:
            raise ValueError(f"{total:,} bands of {k} of {num_layers} layers: too many to train every one")
        picked: list[tuple[int, ...]] = []
        while len(picked) < draws:
            c = tuple(sorted(rng.choice(num_layers, k, replace=False).tolist()))
            if c != chosen and c not in picked:
                picked.append(c)
    else:
        combos = [c for c in itertools.combinations(range(num_layers), k) if c != chosen]
        picked = (
            combos
            if draws is None or draws >= len(combos)
            else [combos[i] for i in rng.choice(len(combos), draws, replace=False)]
        )
    return [
        {
            "layers": [int(x) for x in c],
            "overlap": len(set(c) & set(chosen)),
            "contiguous": contiguous(list(c)),
            "mean_layer": float(np.mean(c)),
        }
        for c in picked
    ]


def top_band(num_layers: int, k: int) -> list[int]:
    """The top k encoder layers, [L - k, ..., L - 1]: the naive choice a diagnosed band must beat."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"k must be in [1, {num_layers}], got {k}")
    return list(range(num_layers - k, num_layers))


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
