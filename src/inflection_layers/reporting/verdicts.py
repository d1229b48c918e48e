"""The verdict rules of the report, all in one place: decisions from intervals against the claimed effect.

Four words only (``VERDICTS``). Every statistical part has a seed-level interval [low, high] (the level is the
report's `confidence`; equivalence and non-inferiority use TOST's 1 - 2 alpha) and a rule fixed before the data
(data/paper/decisions.csv). For a *directional* claim with claimed effect d > 0, the interval is first oriented
so that the claimed direction is positive ([lo, hi]):

==================  ============================================  ===================================
verdict             directional (effect d)                        two-sided around d (region [a, b])
==================  ============================================  ===================================
Reproduced          lo > 0 and hi >= d                            [lo, hi] inside [a, b]
Partially repro.    lo > 0 and hi < d (the direction, less)       lo > 0 and [lo, hi] misses [a, b]
Not reproduced      lo <= 0 and hi < d (this includes hi < 0)     lo <= 0 and [lo, hi] misses [a, b]
Inconclusive        lo <= 0 and hi >= d                           otherwise (it overlaps [a, b])
==================  ============================================  ===================================

Equivalence within +-m: Reproduced when [low, high] lies inside (-m, m); Not reproduced when it lies entirely
outside; else Inconclusive. Non-inferiority by m: Reproduced when low > -m; Not reproduced when high < -m; else
Inconclusive. Categorical claims (a layer, a band): all cells match, Reproduced; none, Not reproduced; some,
Partially reproduced. A part without an interval (fewer than 2 seeds) is Inconclusive. No rule uses the observed
spread to decide what the study "could have detected": post-hoc power is not evidence (the report gives a
prospective power table instead). A claim's parts combine by :func:`combine`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REPRODUCED = "Reproduced"
PARTIAL = "Partially reproduced"
NOT_REPRODUCED = "Not reproduced"
INCONCLUSIVE = "Inconclusive"
VERDICTS = (REPRODUCED, PARTIAL, NOT_REPRODUCED, INCONCLUSIVE)
STRENGTH = {NOT_REPRODUCED: 0, INCONCLUSIVE: 1, PARTIAL: 2, REPRODUCED: 3}  # the weakest part decides an all-part claim
RULES = ("directional", "two_sided", "equivalence", "noninferiority", "categorical")
DIRECTIONS = ("positive", "negative", "either", "none")


def _missing(*xs: float | None) -> bool:
    return any(x is None or (isinstance(x, float) and math.isnan(x)) for x in xs)


def orient(low: float, high: float, direction: str, mean: float | None = None) -> tuple[float, float]:
    """The interval with the claimed direction positive: as is (positive), mirrored (negative), or by the sign of the
    mean (either: a claim that an association exists, whichever its sign)."""
    if direction == "negative" or (direction == "either" and mean is not None and mean < 0):
        return -high, -low
    return low, high


def directional(low: float, high: float, d: float, direction: str = "positive", mean: float | None = None) -> str:
    """A claimed direction with a claimed effect d > 0 (see the module's table)."""
    if not d > 0:
        raise ValueError(f"a directional claim needs an effect d > 0, got {d}")
    if _missing(low, high):
        return INCONCLUSIVE
    lo, hi = orient(low, high, direction, mean)
    if lo > 0:
        return REPRODUCED if hi >= d else PARTIAL
    return NOT_REPRODUCED if hi < d else INCONCLUSIVE


def two_sided(low: float, high: float, region: tuple[float, float], direction: str = "positive") -> str:
    """A claimed size: the effect lies in `region` (a, b), on the scale where the claimed direction is positive."""
    a, b = region
    if not 0 < a <= b:
        raise ValueError(f"a two-sided claim needs a region 0 < a <= b, got {region}")
    if _missing(low, high):
        return INCONCLUSIVE
    lo, hi = orient(low, high, direction)
    if a <= lo and hi <= b:
        return REPRODUCED
    if hi < a or lo > b:
        return PARTIAL if lo > 0 else NOT_REPRODUCED
    return INCONCLUSIVE


def about(d: float, factor: float) -> tuple[float, float]:
    """The region of 'about d' (d > 0): [d / factor, d * factor]."""
    return d / factor, d * factor


def equivalence(low: float, high: float, margin: float) -> str:
    """A claim that two arms are the same within +-margin, on TOST's (1 - 2 alpha) interval."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if _missing(low, high):
        return INCONCLUSIVE
    if -margin < low and high < margin:
        return REPRODUCED
    return NOT_REPRODUCED if high <= -margin or low >= margin else INCONCLUSIVE


def noninferiority(low: float, high: float, margin: float) -> str:
    """A claim that A is not worse than B by more than `margin` (A - B >= -margin), on the (1 - 2 alpha) interval."""
    if not margin >= 0:
        raise ValueError(f"a non-inferiority margin must be >= 0, got {margin}")
    if _missing(low, high):
        return INCONCLUSIVE
    if low > -margin:
        return REPRODUCED
    return NOT_REPRODUCED if high < -margin else INCONCLUSIVE


def _same(x: object, y: object) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return bool(np.array_equal(x, y))
    return bool(x == y)


def categorical(observed: Sequence[object], expected: object) -> str:
    """Each observed cell (a layer, a band, True) against the expected value: all match, Reproduced; none, Not
    reproduced; some, Partially reproduced; no cells (missing ones left out), Inconclusive."""
    cells = [o for o in observed if not (o is None or (isinstance(o, float) and math.isnan(o)))]
    if not cells:
        return INCONCLUSIVE
    share = sum(_same(o, expected) for o in cells) / len(cells)
    return REPRODUCED if share == 1 else NOT_REPRODUCED if share == 0 else PARTIAL


def combine(verdicts: Sequence[str], how: str) -> str:
    """A claim's verdict from its parts' (order does not matter): `all` (every part must hold) is the weakest part's,
    so Reproduced + Not reproduced is Not reproduced, symmetric with Not reproduced + Inconclusive; `any` (one part
    suffices; its intervals are at Bonferroni's level) is the strongest part's; `single` is its one part's."""
    vs = list(verdicts)
    unknown = set(vs) - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}; expected one of {VERDICTS}")
    if not vs:
        return INCONCLUSIVE
    if how == "single" and len(vs) != 1:
        raise ValueError(f"a single-part claim has {len(vs)} parts")
    pick = min if how in ("all", "single") else max
    if how not in ("all", "any", "single"):
        raise ValueError(f"unknown combination {how!r}; expected all, any or single")
    return pick(vs, key=STRENGTH.__getitem__)


def deciding(verdicts: Sequence[str], how: str) -> int:
    """The index of the part that decides a claim (the weakest for `all`, the strongest for `any`)."""
    pick = min if how in ("all", "single") else max
    return pick(range(len(verdicts)), key=lambda i: STRENGTH[verdicts[i]])
