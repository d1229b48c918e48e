"""The verdict rules of the report, all in one place. Four words only: see ``VERDICTS``.

Every difference is A - B, a fraction of 1, over seeds; (low, high) is the two-sided t-interval of the
per-seed differences (:func:`inflection_layers.reporting.stats.seed_interval`), except for ``equivalent``, which
takes TOST's (1 - 2 alpha) interval (:func:`inflection_layers.reporting.stats.equivalence_test`). A nan interval
(fewer than 2 seeds) is always Inconclusive. Rules are tried top to bottom; the first that holds wins.

==============  ====================================  ===============================================  ==============
claim kind      Reproduced                            Not reproduced                                   Inconclusive
==============  ====================================  ===============================================  ==============
greater (A>B)   low > 0                               high < 0, or high < effect and mde <= effect     otherwise
less (A<B)      high < 0                              low > 0, or low > -effect and mde <= effect      otherwise
equivalent      TOST p < alpha                        low > margin or high < -margin                   otherwise
at_least        low > -margin                         high < -margin                                   otherwise
(A >= B - m)
==============  ====================================  ===============================================  ==============

``effect`` (> 0) is the difference the claim is about: the paper's own stated difference, else the
smallest effect of interest; ``effect=None`` (a claim whose paper states no size) keeps only the direction:
Not reproduced only when the interval excludes 0 on the other side; ``mde`` is the detectable effect (:func:`inflection_layers.reporting.stats.detectable_effect`):
an interval that excludes ``effect`` only counts against the claim when the study could detect it.
``less`` is ``greater`` with A and B swapped. Claims made of several parts: :func:`combine`; claims on
categories (a layer, a band), not on a difference: :func:`categorical`; the equivalence margin:
:func:`equivalence_margin`.
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


def _nan(*xs: float | None) -> bool:
    return any(x is None or math.isnan(x) for x in xs)


def _positive(name: str, x: float, strict: bool = True) -> None:
    if x is None or not math.isfinite(x) or x < 0 or (strict and x == 0):
        raise ValueError(f"{name} must be a {'positive' if strict else 'non-negative'} finite number, got {x}")


def greater(low: float, high: float, mde: float, effect: float | None) -> str:
    """Claim A > B by `effect` (> 0). Reproduced: low > 0. Not reproduced: high < 0, or high < effect while
    mde <= effect (the claimed effect was detectable and is excluded). Inconclusive otherwise (nan mde: never powered).

    ``effect=None``: the paper states no size, only a direction; then Not reproduced only when high < 0 (the
    interval excludes 0 on the other side), and `mde` plays no part."""
    if effect is not None:
        _positive("effect", effect)
    if _nan(low, high):
        return INCONCLUSIVE
    if low > 0:
        return REPRODUCED
    if high < 0 or (effect is not None and high < effect and not _nan(mde) and mde <= effect):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def less(low: float, high: float, mde: float, effect: float | None) -> str:
    """Claim A < B by `effect` (> 0, or None: a direction only): the mirror image of :func:`greater` on B - A
    (interval (-high, -low))."""
    return greater(-high, -low, mde, effect)


def equivalent(p: float, low: float, high: float, margin: float, alpha: float) -> str:
    """Claim A == B within `margin`, on TOST's p and (1 - 2 alpha) interval. Reproduced: p < alpha.
    Not reproduced: low > margin or high < -margin (the interval lies entirely outside). Inconclusive otherwise."""
    _positive("margin", margin)
    if not _nan(p) and p < alpha:
        return REPRODUCED
    if not _nan(low, high) and (low > margin or high < -margin):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def at_least(low: float, high: float, margin: float) -> str:
    """Claim A >= B - margin (non-inferiority, margin >= 0). Reproduced: low > -margin.
    Not reproduced: high < -margin. Inconclusive otherwise."""
    _positive("margin", margin, strict=False)
    if _nan(low, high):
        return INCONCLUSIVE
    if low > -margin:
        return REPRODUCED
    return NOT_REPRODUCED if high < -margin else INCONCLUSIVE


RULES = {"greater": greater, "less": less, "equivalent": equivalent, "at_least": at_least}


def combine(verdicts: Sequence[str]) -> str:
    """The verdict of a claim made of parts, from how many parts are reproduced (order does not matter):

    =========================================  =====================
    parts                                      verdict
    =========================================  =====================
    none                                       Inconclusive
    all Reproduced                             Reproduced
    all Not reproduced                         Not reproduced
    all Inconclusive                           Inconclusive
    some (not all) Reproduced or Partially     Partially reproduced
    none Reproduced/Partially, some Not        Not reproduced
    =========================================  =====================

    A Partially reproduced part counts as reproduced in part. Unanimous parts keep their verdict (symmetric
    in Reproduced / Not reproduced). An Inconclusive part never counts as reproduced, so with Inconclusive
    parts the verdict is Partially reproduced when some part is reproduced, Not reproduced when some part is
    not and none is: the claim as stated (every part) is then contradicted and supported nowhere.
    """
    vs = list(verdicts)
    unknown = set(vs) - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}; expected one of {VERDICTS}")
    if not vs:
        return INCONCLUSIVE
    if len(set(vs)) == 1:
        return vs[0]
    if REPRODUCED in vs or PARTIAL in vs:
        return PARTIAL
    return NOT_REPRODUCED  # a mix of Not reproduced and Inconclusive


def _missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _same(x: object, y: object) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return bool(np.array_equal(x, y))
    return bool(x == y)


def categorical(observed: Sequence[object], expected: object) -> str:
    """Non-statistical claim: each cell of `observed` (K,) (e.g. the entropy-minimum layer per seed) is compared
    with `expected` (one value, e.g. 5, or one band (4, 5, 6)). All match: Reproduced; none: Not reproduced;
    some: Partially reproduced; no cells: Inconclusive. Missing cells (None, nan) are left out, not mismatches."""
    cells = [o for o in observed if not _missing(o)]
    if not cells:
        return INCONCLUSIVE
    share = sum(_same(o, expected) for o in cells) / len(cells)
    return REPRODUCED if share == 1 else NOT_REPRODUCED if share == 0 else PARTIAL


def equivalence_margin(paper_std: float | None, smallest_interpreted_difference: float | None) -> tuple[float, str]:
    """The equivalence margin (fraction of 1) and its reason as a sentence.

    The paper's own seed std of the compared rows when it states one (> 0); else half the smallest difference
    the paper interprets (> 0). Neither: ValueError (an equivalence claim needs a margin).
    """
    if not _nan(paper_std) and paper_std > 0:
        return float(paper_std), f"the paper's own seed std ({100 * paper_std:.2f} points)"
    d = smallest_interpreted_difference
    if not _nan(d) and d > 0:
        return (
            d / 2,
            f"half the smallest difference the paper interprets ({100 * d:.2f} points / 2 = {50 * d:.2f} points)",
        )
    raise ValueError("no equivalence margin: the paper states neither a seed std nor a difference it interprets")
