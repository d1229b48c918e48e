"""Tests of inflection_layers.reporting.verdicts: every outcome of every rule, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inflection_layers.reporting import verdicts
from inflection_layers.reporting.stats import compare_arms, equivalence_test
from inflection_layers.reporting.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    PARTIAL,
    REPRODUCED,
    RULES,
    VERDICTS,
    at_least,
    categorical,
    combine,
    equivalence_margin,
    equivalent,
    greater,
    less,
)

R, P, N, I = REPRODUCED, PARTIAL, NOT_REPRODUCED, INCONCLUSIVE
nan = math.nan


def test_the_four_words():
    assert VERDICTS == ("Reproduced", "Partially reproduced", "Not reproduced", "Inconclusive")
    assert set(RULES) == {"greater", "less", "equivalent", "at_least"}


# (low, high, mde, effect) -> verdict of 'A > B'
GREATER = [
    ((0.01, 0.05, 0.02, 0.03), R),  # interval above 0
    ((0.01, 0.02, 0.01, 0.03), R),  # above 0, though below the claimed effect: the direction is reproduced
    ((0.01, 0.05, nan, 0.03), R),
    ((-0.05, -0.01, 0.10, 0.03), N),  # significantly the other way, even underpowered
    ((-0.01, 0.02, 0.02, 0.03), N),  # claimed effect detectable and excluded
    ((-0.01, 0.02, 0.03, 0.03), N),  # mde == effect counts as detectable
    ((0.0, 0.02, 0.0, 0.03), N),  # sd 0 style: point interval at 0, mde 0
    ((-0.01, 0.02, 0.05, 0.03), I),  # underpowered, interval includes 0
    ((-0.01, 0.04, 0.02, 0.03), I),  # interval includes the claimed effect
    ((-0.01, 0.03, 0.02, 0.03), I),  # high == effect: not excluded
    ((0.0, 0.05, 0.02, 0.03), I),  # low == 0: not above 0
    ((-0.02, 0.0, 0.05, 0.03), I),  # high == 0: not below 0; underpowered
    ((-0.01, 0.02, nan, 0.03), I),  # power unknown: cannot count the exclusion
    ((nan, nan, nan, 0.03), I),  # S = 1
    ((nan, nan, 0.01, 0.03), I),
]


@pytest.mark.parametrize("args, want", GREATER)
def test_greater(args, want):
    assert greater(*args) == want


@pytest.mark.parametrize("args, want", GREATER)
def test_less_is_the_mirror_of_greater(args, want):
    low, high, mde, effect = args
    assert less(-high, -low, mde, effect) == want


@pytest.mark.parametrize(
    "args, want",
    [
        ((-0.05, -0.01, 0.02, 0.03), R),
        ((0.01, 0.05, 0.10, 0.03), N),
        ((-0.02, 0.01, 0.02, 0.03), N),
        ((-0.02, 0.01, 0.05, 0.03), I),
        ((-0.04, 0.01, 0.02, 0.03), I),
        ((nan, nan, nan, 0.03), I),
    ],
)
def test_less(args, want):
    assert less(*args) == want


@pytest.mark.parametrize("rule", [greater, less])
@pytest.mark.parametrize("effect", [0.0, -0.01, nan])  # None is allowed: a direction only (tests/test_claims.py)
def test_effect_must_be_positive(rule, effect):
    with pytest.raises(ValueError):
        rule(0.01, 0.02, 0.01, effect)


# (p, low, high, margin, alpha) -> verdict of 'A == B within margin'
@pytest.mark.parametrize(
    "args, want",
    [
        ((0.01, -0.004, 0.004, 0.005, 0.05), R),
        ((0.0, 0.0, 0.0, 0.005, 0.05), R),  # sd 0 convention: p 0, point interval
        ((0.05, -0.004, 0.006, 0.005, 0.05), I),  # p == alpha: not below
        ((0.30, -0.002, 0.008, 0.005, 0.05), I),  # straddles the margin
        ((0.99, 0.006, 0.02, 0.005, 0.05), N),  # entirely above +margin
        ((0.99, -0.02, -0.006, 0.005, 0.05), N),  # entirely below -margin
        ((0.90, 0.005, 0.02, 0.005, 0.05), I),  # low == margin: not entirely outside
        ((nan, nan, nan, 0.005, 0.05), I),  # S = 1
        ((nan, 0.01, 0.02, 0.005, 0.05), N),
    ],
)
def test_equivalent(args, want):
    assert equivalent(*args) == want


@pytest.mark.parametrize("margin", [0.0, -0.01, nan])
def test_equivalent_margin_must_be_positive(margin):
    with pytest.raises(ValueError):
        equivalent(0.01, -0.001, 0.001, margin, 0.05)


# (low, high, margin) -> verdict of 'A >= B - margin'
@pytest.mark.parametrize(
    "args, want",
    [
        ((-0.004, 0.01, 0.005), R),
        ((0.01, 0.02, 0.0), R),  # margin 0: A significantly better
        ((-0.005, 0.01, 0.005), I),  # low == -margin: not above
        ((-0.02, 0.01, 0.005), I),
        ((-0.03, -0.006, 0.005), N),
        ((-0.03, -0.005, 0.005), I),  # high == -margin: not below
        ((-0.03, -0.001, 0.0), N),
        ((nan, nan, 0.005), I),
    ],
)
def test_at_least(args, want):
    assert at_least(*args) == want


@pytest.mark.parametrize("margin", [-0.01, nan])
def test_at_least_margin_must_be_non_negative(margin):
    with pytest.raises(ValueError):
        at_least(0.0, 0.1, margin)


@pytest.mark.parametrize(
    "parts, want",
    [
        ([], I),
        ([R], R),
        ([N], N),
        ([I], I),
        ([P], P),
        ([R, R, R], R),
        ([N, N, N], N),
        ([I, I], I),
        ([P, P], P),
        ([R, N], P),
        ([R, I], P),
        ([R, R, I], P),
        ([R, N, I], P),
        ([R, P], P),
        ([P, N], P),
        ([P, I], P),
        ([N, I], N),
        ([I, I, N], N),
        ([N, N, I], N),
    ],
)
def test_combine(parts, want):
    assert combine(parts) == want
    assert combine(list(reversed(parts))) == want  # order does not matter


def test_combine_rejects_other_words():
    with pytest.raises(ValueError):
        combine([R, "supported"])


@pytest.mark.parametrize(
    "observed, expected, want",
    [
        ([5, 5, 5], 5, R),
        ([5, 6, 5], 5, P),
        ([6, 7], 5, N),
        ([], 5, I),
        ([None, nan], 5, I),  # only missing cells
        ([5, None], 5, R),  # a missing cell is left out, not a mismatch
        ([0, 0, 0], 0, R),  # index 0 is a value, not a missing cell
        ([0, 1], 0, P),
        ([(4, 5, 6), (4, 5, 6)], (4, 5, 6), R),  # bands
        ([(4, 5, 6), (5, 6, 7)], (4, 5, 6), P),
        ([np.array([4, 5]), np.array([4, 5])], np.array([4, 5]), R),
        ([np.array([4, 5]), np.array([4, 6, 7])], np.array([4, 5]), P),
        (["b", "b"], "a", N),
    ],
)
def test_categorical(observed, expected, want):
    assert categorical(observed, expected) == want


@pytest.mark.parametrize(
    "std, smallest, margin, reason",
    [
        (0.0023, None, 0.0023, "the paper's own seed std (0.23 points)"),
        (0.0023, 0.01, 0.0023, "the paper's own seed std (0.23 points)"),
        (None, 0.01, 0.005, "half the smallest difference the paper interprets (1.00 points / 2 = 0.50 points)"),
        (nan, 0.01, 0.005, "half the smallest difference the paper interprets (1.00 points / 2 = 0.50 points)"),
        (
            0.0,
            0.02,
            0.01,
            "half the smallest difference the paper interprets (2.00 points / 2 = 1.00 points)",
        ),  # std 0: no margin
    ],
)
def test_equivalence_margin(std, smallest, margin, reason):
    assert equivalence_margin(std, smallest) == (pytest.approx(margin), reason)


@pytest.mark.parametrize("std, smallest", [(None, None), (0.0, 0.0), (nan, nan), (None, -0.01)])
def test_equivalence_margin_needs_something(std, smallest):
    with pytest.raises(ValueError):
        equivalence_margin(std, smallest)


def test_from_statistics_to_verdicts():
    """The rules applied to compare_arms / equivalence_test output of identical arms: equal, not greater."""
    a = (np.random.default_rng(0).random((3, 200)) < 0.8).astype(int)
    r = compare_arms(a, a.copy(), n_boot=200, confidence=0.95, alpha=0.05, power=0.8, seed=0)
    assert greater(r["ci_low"], r["ci_high"], r["detectable_effect"], 0.01) == N
    assert at_least(r["ci_low"], r["ci_high"], 0.005) == R
    e = equivalence_test(r["diffs"], 0.005, 0.05)
    assert equivalent(e["p"], e["low"], e["high"], 0.005, 0.05) == R


def test_module_is_short():
    assert len(open(verdicts.__file__).read().splitlines()) < 200
