"""Each verdict rule's outcomes as a table of (interval, claim) -> verdict, and how parts combine."""

from __future__ import annotations

import math

import pytest

from inflection_layers.reporting.verdicts import (
    INCONCLUSIVE as I,
)
from inflection_layers.reporting.verdicts import (
    NOT_REPRODUCED as N,
)
from inflection_layers.reporting.verdicts import (
    PARTIAL as P,
)
from inflection_layers.reporting.verdicts import (
    REPRODUCED as R,
)
from inflection_layers.reporting.verdicts import (
    about,
    categorical,
    combine,
    deciding,
    directional,
    equivalence,
    noninferiority,
    two_sided,
)

D = 1.0  # the claimed effect


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (1.2, 2.0, R),  # the interval lies above d
        (0.5, 1.5, R),  # straddles d with lo > 0: the direction holds and d is not excluded
        (0.2, 0.8, P),  # between 0 and d: the direction, a smaller effect
        (-0.3, 0.7, N),  # straddles 0 with hi < d: excludes the claimed effect, not the direction
        (-0.5, 1.5, I),  # straddles both 0 and d
        (-2.0, -0.5, N),  # below 0: the opposite direction
        (math.nan, math.nan, I),  # fewer than 2 seeds
    ],
)
def test_directional(low: float, high: float, expected: str) -> None:
    assert directional(low, high, D) == expected
    assert directional(-high, -low, D, "negative") == expected  # the mirror image of a claimed decrease


@pytest.mark.parametrize(
    ("low", "high", "mean", "expected"),
    [(-0.9, -0.5, -0.7, P), (0.5, 0.9, 0.7, P), (-0.6, 0.2, -0.2, N), (-1.5, -1.1, -1.3, R)],
)
def test_an_either_way_claim_is_oriented_by_the_mean(low: float, high: float, mean: float, expected: str) -> None:
    assert directional(low, high, D, "either", mean) == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.6, 1.8, R),  # inside [0.5, 2]
        (0.3, 1.8, I),  # overlaps the region, not inside
        (0.1, 0.4, P),  # the direction, below the region
        (2.5, 3.0, P),  # the direction, above the region: a larger size than claimed
        (-0.2, 0.4, N),  # misses the region and includes 0
        (-1.0, -0.2, N),  # the opposite direction
        (math.nan, 1.0, I),
    ],
)
def test_two_sided_around_d(low: float, high: float, expected: str) -> None:
    assert two_sided(low, high, about(D, 2.0)) == expected
    assert two_sided(-high, -low, about(D, 2.0), "negative") == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(-0.1, 0.2, R), (-0.3, 0.1, I), (0.1, 0.4, I), (0.3, 0.6, N), (-0.9, -0.3, N), (math.nan, math.nan, I)],
)
def test_equivalence_within_a_margin(low: float, high: float, expected: str) -> None:
    assert equivalence(low, high, 0.25) == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"), [(-0.1, 0.5, R), (0.2, 0.9, R), (-0.4, 0.3, I), (-0.9, -0.4, N), (math.nan, 0.0, I)]
)
def test_noninferiority_by_a_margin(low: float, high: float, expected: str) -> None:
    assert noninferiority(low, high, 0.25) == expected


@pytest.mark.parametrize(
    ("observed", "expected", "verdict"),
    [
        ([5, 5, 5], 5, R),
        ([5, 4, 5], 5, P),
        ([3, 4], 5, N),
        ([], 5, I),
        ([(0, 1), (0, 1)], (0, 1), R),
        ([True, False], True, P),
    ],
)
def test_categorical(observed: list, expected: object, verdict: str) -> None:
    assert categorical(observed, expected) == verdict


@pytest.mark.parametrize(
    ("verdicts", "how", "expected"),
    [
        ([R, N], "all", N),  # symmetric: a contradicted part contradicts the claim ...
        ([N, I], "all", N),  # ... as it does beside an inconclusive one
        ([R, I], "all", I),
        ([R, P], "all", P),
        ([R, R], "all", R),
        ([N, I, P], "any", P),
        ([N, R], "any", R),
        ([I], "single", I),
        ([], "all", I),
    ],
)
def test_combine_is_the_weakest_part_for_all_and_the_strongest_for_any(
    verdicts: list[str], how: str, expected: str
) -> None:
    assert combine(verdicts, how) == expected
    assert combine(list(reversed(verdicts)), how) == expected  # order does not matter
    if verdicts:
        assert verdicts[deciding(verdicts, how)] == expected


@pytest.mark.parametrize(
    "call",
    [
        lambda: directional(0, 1, 0.0),
        lambda: two_sided(0, 1, (0.0, 1.0)),
        lambda: equivalence(0, 1, 0.0),
        lambda: noninferiority(0, 1, -0.1),
        lambda: combine([R, "Maybe"], "all"),
        lambda: combine([R, R], "single"),
        lambda: combine([R], "most"),
    ],
)
def test_bad_rules_are_refused(call) -> None:
    with pytest.raises(ValueError):
        call()
