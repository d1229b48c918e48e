"""Tests of inflection_layers.reporting.stats: seed-level t statistics, the hierarchical bootstrap, TOST, power,
McNemar, Holm."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from inflection_layers.reporting import stats
from inflection_layers.reporting.stats import (
    _CHUNK,
    band_rank_test,
    compare_arms,
    depth_trend,
    equivalence_test,
    hierarchical_bootstrap,
    holm,
    mcnemar_exact,
    partial_spearman,
    points,
    seed_interval,
    seeds_needed,
    t_test_power,
)

nan = math.nan


def t_by_hand(x: list[float], confidence: float) -> tuple[float, float, float, float]:
    """mean, low, high, two-sided p of a one-sample t-test, from scipy.stats.t directly."""
    x = np.asarray(x, dtype=float)
    n, m, sd = x.size, x.mean(), x.std(ddof=1)
    se = sd / math.sqrt(n)
    q = sps.t.ppf(0.5 + confidence / 2, n - 1)
    return m, m - q * se, m + q * se, 2 * sps.t.sf(abs(m / se), n - 1)


# --- seed_interval ---


@pytest.mark.parametrize("x", [[0.01, 0.03, -0.005], [0.02, 0.021], [-0.1, 0.0, 0.05, 0.2, 0.01]])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_seed_interval_matches_hand_t(x, confidence):
    r = seed_interval(np.array(x), confidence)
    m, lo, hi, p = t_by_hand(x, confidence)
    assert r["n"] == len(x)
    assert r["mean"] == pytest.approx(m) and r["sd"] == pytest.approx(np.std(x, ddof=1))
    assert (r["low"], r["high"], r["p"]) == pytest.approx((lo, hi, p))


@pytest.mark.parametrize(
    "x, expected",
    [
        ([], {"n": 0, "mean": nan, "sd": nan, "low": nan, "high": nan, "p": nan}),
        ([0.02], {"n": 1, "mean": 0.02, "sd": nan, "low": nan, "high": nan, "p": nan}),  # S = 1
        ([0.0], {"n": 1, "mean": 0.0, "sd": nan, "low": nan, "high": nan, "p": nan}),  # S = 1, falsy 0
        ([0.1, 0.1, 0.1], {"n": 3, "mean": 0.1, "sd": 0.0, "low": 0.1, "high": 0.1, "p": 0.0}),  # sd 0, mean != 0
        ([-0.2, -0.2], {"n": 2, "mean": -0.2, "sd": 0.0, "low": -0.2, "high": -0.2, "p": 0.0}),
        ([0.0, 0.0, 0.0], {"n": 3, "mean": 0.0, "sd": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}),  # sd 0, mean 0
    ],
)
def test_seed_interval_edge_cases(x, expected):
    r = seed_interval(np.array(x, dtype=float), 0.95)
    assert r.keys() == expected.keys()
    for k, v in expected.items():
        assert (math.isnan(r[k]) and math.isnan(v)) or r[k] == v, k


def test_seed_interval_rejects_nan():
    with pytest.raises(ValueError):
        seed_interval(np.array([0.1, nan, 0.2]), 0.95)


# --- hierarchical bootstrap ---


def bootstrap_by_loop(a, b, n_boot, confidence, rng):
    """Slow reference: the same draws as the vectorised version (one block), the statistic by explicit loops."""
    S, N = a.shape
    seeds = rng.integers(0, S, size=(n_boot, S))
    examples = rng.integers(0, N, size=(n_boot, S, N))
    boots = []
    for r in range(n_boot):
        total = 0.0
        for j in range(S):
            s = seeds[r, j]
            acc_a = sum(a[s, examples[r, j, k]] for k in range(N)) / N
            acc_b = sum(b[s, examples[r, j, k]] for k in range(N)) / N
            total += acc_a - acc_b
        boots.append(total / S)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(np.mean(a) - np.mean(b)), float(lo), float(hi)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hierarchical_bootstrap_matches_explicit_loop(seed):
    a = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    b = np.array([[0, 1, 0, 0, 1], [1, 1, 0, 1, 0]])
    n_boot = 200
    assert n_boot <= _CHUNK  # one block: the reference replays the same draws
    got = hierarchical_bootstrap(a, b, n_boot, 0.9, np.random.default_rng(seed))
    want = bootstrap_by_loop(a, b, n_boot, 0.9, np.random.default_rng(seed))
    assert got == pytest.approx(want, abs=1e-12)


def two_stage_variance(d: np.ndarray) -> float:
    """Exact variance of the two-stage bootstrap statistic: (Var_s(m_s) + E_s[v_s] / N) / S (population moments)."""
    S, N = d.shape
    return (d.mean(axis=1).var() + d.var(axis=1).mean() / N) / S


def boot_variance(a, b, n_boot, seed):
    """Variance of the bootstrap distribution of hierarchical_bootstrap, replaying its documented draw order."""
    boots = []
    rng = np.random.default_rng(seed)
    S, N = a.shape
    d = (a - b).astype(float)
    for start in range(0, n_boot, _CHUNK):
        B = min(_CHUNK, n_boot - start)
        seeds = rng.integers(0, S, size=(B, S))
        examples = rng.integers(0, N, size=(B, S, N))
        boots.append(d[seeds[:, :, None], examples].mean(axis=(1, 2)))
    return np.concatenate(boots).var()


def normal_interval_width(var: float, confidence: float) -> float:
    return 2 * sps.norm.ppf(0.5 + confidence / 2) * math.sqrt(var)


def arms(p_a: list[float], p_b: list[float], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.stack([rng.random(n) < p for p in p_a]).astype(int)
    b = np.stack([rng.random(n) < p for p in p_b]).astype(int)
    return a, b


def test_hierarchical_bootstrap_width_matches_two_stage_variance():
    """Seed and example levels both matter here; the wrong hierarchies give clearly different widths."""
    a, b = arms([0.9, 0.6, 0.8, 0.7], [0.7] * 4, n=60, seed=2)
    d = (a - b).astype(float)
    S, N = d.shape
    true_var = two_stage_variance(d)
    # the alternatives a wrong implementation would produce, all far from the two-stage variance
    examples_only = d.mean(axis=0).var() / N  # one set of example indices for every seed, no seed draw
    seeds_only = d.mean(axis=1).var() / S  # seeds resampled, examples kept
    examples_per_seed_no_seed_draw = d.var(axis=1).mean() / N / S
    for wrong in (examples_only, seeds_only, examples_per_seed_no_seed_draw):
        assert abs(wrong / true_var - 1) > 0.4
    n_boot = 20_000
    # the distribution's variance (replayed draws) and the percentile width of the function itself
    assert boot_variance(a, b, n_boot, seed=11) == pytest.approx(true_var, rel=0.05)
    point, lo, hi = hierarchical_bootstrap(a, b, n_boot, 0.9, np.random.default_rng(11))
    assert point == pytest.approx(d.mean())
    assert hi - lo == pytest.approx(normal_interval_width(true_var, 0.9), rel=0.08)


def test_hierarchical_bootstrap_identical_seeds_add_nothing():
    """With every seed identical the seed level contributes no variance: Var = E[v_s] / (N S).

    One set of example indices shared by all drawn seeds (a wrong hierarchy) would give S times that.
    """
    a1, b1 = arms([0.8], [0.7], n=80, seed=5)
    a, b = np.repeat(a1, 3, axis=0), np.repeat(b1, 3, axis=0)
    d = (a - b).astype(float)
    S, N = d.shape
    assert d.mean(axis=1).var() == 0
    want = d.var(axis=1).mean() / (N * S)
    assert two_stage_variance(d) == pytest.approx(want)
    assert boot_variance(a, b, 20_000, seed=2) == pytest.approx(want, rel=0.05)
    _, lo, hi = hierarchical_bootstrap(a, b, 20_000, 0.9, np.random.default_rng(2))
    assert hi - lo == pytest.approx(normal_interval_width(want, 0.9), rel=0.08)


def test_hierarchical_bootstrap_degenerate_and_invalid():
    a = np.ones((3, 10))
    assert hierarchical_bootstrap(a, a, 50, 0.95, np.random.default_rng(0)) == (0.0, 0.0, 0.0)
    one = hierarchical_bootstrap(np.array([1, 0, 1, 1]), np.array([0, 0, 1, 0]), 100, 0.95, np.random.default_rng(0))
    assert one[0] == 0.5 and one[1] <= 0.5 <= one[2]  # a 1-D array is one seed
    with pytest.raises(ValueError):
        hierarchical_bootstrap(np.ones((2, 3)), np.ones((3, 3)), 10, 0.95, np.random.default_rng(0))
    with pytest.raises(ValueError):
        hierarchical_bootstrap(np.ones((2, 0)), np.ones((2, 0)), 10, 0.95, np.random.default_rng(0))
    with pytest.raises(ValueError):
        hierarchical_bootstrap(a, a, 0, 0.95, np.random.default_rng(0))


def test_hierarchical_bootstrap_is_fast():
    a, b = arms([0.85] * 3, [0.83] * 3, n=1066, seed=0)
    t0 = time.perf_counter()
    hierarchical_bootstrap(a, b, 2000, 0.95, np.random.default_rng(0))
    assert time.perf_counter() - t0 < 1.0


# --- TOST ---


def tost_by_hand(x: list[float], margin: float) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    n, m = x.size, x.mean()
    se = x.std(ddof=1) / math.sqrt(n)
    p_lower = sps.t.sf((m + margin) / se, n - 1)  # H0: mean <= -margin
    p_upper = sps.t.cdf((m - margin) / se, n - 1)  # H0: mean >= +margin
    return max(p_lower, p_upper), p_lower, p_upper


@pytest.mark.parametrize(
    "x, margin, alpha, equivalent",
    [
        ([0.01, 0.02, 0.015], 0.03, 0.05, True),
        ([0.01, 0.02, 0.015], 0.02, 0.05, False),
        ([-0.01, 0.012, 0.003, -0.004], 0.01, 0.05, False),
        ([-0.01, 0.012, 0.003, -0.004], 0.03, 0.05, True),
        ([0.05, 0.06], 0.01, 0.05, False),  # clearly outside
    ],
)
def test_equivalence_test_matches_hand_tost(x, margin, alpha, equivalent):
    r = equivalence_test(np.array(x), margin, alpha)
    p, p_lo, p_up = tost_by_hand(x, margin)
    assert (r["p"], r["p_lower"], r["p_upper"]) == pytest.approx((p, p_lo, p_up))
    assert r["equivalent"] is equivalent
    _, lo, hi, _ = t_by_hand(x, 1 - 2 * alpha)  # the conventional (1 - 2 alpha) TOST interval
    assert (r["low"], r["high"]) == pytest.approx((lo, hi))
    assert r["equivalent"] == (-margin < r["low"] and r["high"] < margin)


@pytest.mark.parametrize(
    "x, margin, p, equivalent, low",
    [
        ([0.01], 0.05, nan, False, nan),  # S = 1
        ([], 0.05, nan, False, nan),
        ([0.01, 0.01, 0.01], 0.02, 0.0, True, 0.01),  # sd 0 inside
        ([0.0, 0.0], 0.02, 0.0, True, 0.0),  # sd 0, falsy mean 0
        ([0.03, 0.03], 0.02, 1.0, False, 0.03),  # sd 0 outside
        ([-0.02, -0.02], 0.02, 1.0, False, -0.02),  # sd 0 on the margin: not strictly inside
    ],
)
def test_equivalence_test_edge_cases(x, margin, p, equivalent, low):
    r = equivalence_test(np.array(x, dtype=float), margin, 0.05)
    assert r["equivalent"] is equivalent
    assert (math.isnan(r["p"]) and math.isnan(p)) or r["p"] == p
    assert (math.isnan(r["low"]) and math.isnan(low)) or r["low"] == r["high"] == low


@pytest.mark.parametrize("margin", [0.0, -0.01, nan])
def test_equivalence_test_rejects_bad_margin(margin):
    with pytest.raises(ValueError):
        equivalence_test(np.array([0.1, 0.2]), margin, 0.05)


# --- prospective power and the band tests ---


def power_by_nct(effect: float, sd: float, n: int, alpha: float) -> float:
    df, nc = n - 1, effect / sd * math.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)


@pytest.mark.parametrize(
    "d, sd, alpha, power",
    # the last: the default run's P6 part, where statsmodels' root finder returned nan
    [
        (0.13, 0.275, 0.05, 0.8),
        (1.0, 0.3, 0.05, 0.8),
        (0.5, 1.0, 0.1, 0.9),
        (2.913, 0.2352, 0.05, 0.8),
    ],
)
def test_seeds_needed_is_the_smallest_n_reaching_the_power(d, sd, alpha, power):
    n = int(seeds_needed(d, sd, alpha, power))
    assert power_by_nct(d, sd, n, alpha) >= power - 1e-6 and (n == 2 or power_by_nct(d, sd, n - 1, alpha) < power)


@pytest.mark.parametrize("effect_size, n", [(0.47, 10), (11.0, 2), (3.0, 3)])
def test_t_test_power_matches_simulation_where_the_noncentral_t_fails(effect_size, n):
    """Monte Carlo t-tests on normal samples; (11, 2) is the default run's O7 part, where scipy's nct gives nan."""
    x = np.random.default_rng(0).normal(effect_size, 1.0, size=(200_000, n))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
    simulated = float(np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1)))
    assert t_test_power(effect_size, n, 0.05) == pytest.approx(simulated, abs=0.005)
    assert seeds_needed(effect_size, 1.0, 0.05, simulated - 0.01) <= n


@pytest.mark.parametrize(
    "d, sd, expected", [(0.5, 0.0, 2.0), (0.5, nan, nan), (0.0, 1.0, nan), (nan, 1.0, nan), (1e-6, 10.0, math.inf)]
)
def test_seeds_needed_edge_cases(d, sd, expected):
    got = seeds_needed(d, sd, 0.05, 0.8)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def bands(ski_accs: list[float], draws: list[list[float]]) -> pd.DataFrame:
    rows = []
    for g, (ski, others) in enumerate(zip(ski_accs, draws, strict=True)):
        rows.append({"group": f"g{g}", "band": "ski", "accuracy": ski, "mean_layer": 4.0, "size": 3, "overlap": 3})
        rows += [
            {"group": f"g{g}", "band": f"random_{i}", "accuracy": a, "mean_layer": float(i), "size": 3, "overlap": 0}
            for i, a in enumerate(others)
        ]
    return pd.DataFrame(rows)


def test_a_ski_band_at_the_top_of_every_group_is_unlikely_by_chance():
    top = band_rank_test(bands([0.9] * 6, [[0.80, 0.81, 0.82, 0.83, 0.84]] * 6), seed=0)
    mid = band_rank_test(bands([0.82] * 6, [[0.80, 0.81, 0.83, 0.84, 0.85]] * 6), seed=0)
    assert top["mean_share"] == 1.0 and top["p"] < 0.001 and "g0 rank 1 of 6" in top["text"]
    assert mid["mean_share"] == pytest.approx(0.4) and mid["p"] > 0.5


def test_the_depth_trend_is_fitted_within_groups_and_ski_measured_against_it():
    """Accuracy rises 1 point per layer within every group; a SKI band at layer 4 lying 2 points above that line is
    +2."""
    rows = []
    for g, base in enumerate((0.80, 0.70, 0.75)):
        rows += [
            {
                "group": f"g{g}",
                "band": f"random_{i}",
                "accuracy": base + 0.01 * i,
                "mean_layer": float(i),
                "size": 3,
                "overlap": i % 2,
            }
            for i in range(5)
        ]
        rows.append(
            {
                "group": f"g{g}",
                "band": "ski",
                "accuracy": base + 0.04 + 0.02,
                "mean_layer": 4.0,
                "size": 3,
                "overlap": 3,
            }
        )
    trend = depth_trend(pd.DataFrame(rows))
    assert trend["slope"] == pytest.approx(0.01, abs=1e-9) and trend["mean"] == pytest.approx(0.02, abs=0.005)


def test_partial_spearman_removes_a_shared_cause():
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    x, y = z + 0.1 * rng.normal(size=200), z + 0.1 * rng.normal(size=200)
    assert sps.spearmanr(x, y)[0] > 0.9 and abs(partial_spearman(pd.Series(x), pd.Series(y), pd.Series(z))) < 0.2
    assert partial_spearman(pd.Series(x), pd.Series(-x), pd.Series(rng.normal(size=200))) < -0.95


# --- McNemar and Holm ---


@pytest.mark.parametrize(
    "a, b, n_ab, n_ba",
    [
        ([1, 1, 1, 0, 0, 1, 1, 0], [0, 0, 1, 0, 1, 0, 0, 0], 4, 1),
        ([0, 0, 1], [1, 1, 1], 0, 2),
        ([1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 1, 1], 2, 2),
        ([1] * 12 + [0] * 3, [0] * 12 + [0] * 3, 12, 0),
    ],
)
def test_mcnemar_exact_is_binomial(a, b, n_ab, n_ba):
    got = mcnemar_exact(np.array(a, dtype=bool), np.array(b, dtype=bool))
    assert got[:2] == (n_ab, n_ba)
    assert got[2] == pytest.approx(sps.binomtest(n_ab, n_ab + n_ba, 0.5).pvalue)


@pytest.mark.parametrize("a, b", [([1, 0, 1], [1, 0, 1]), ([0, 0], [0, 0]), ([], [])])
def test_mcnemar_without_discordant_pairs(a, b):
    assert mcnemar_exact(np.array(a, dtype=bool), np.array(b, dtype=bool)) == (0, 0, 1.0)


@pytest.mark.parametrize(
    "p, reject, adjusted",
    [
        ([0.01, 0.04, 0.03], [True, False, False], [0.03, 0.06, 0.06]),
        ([0.01, nan, 0.04, 0.03], [True, False, False, False], [0.03, nan, 0.06, 0.06]),  # nan not in the family
        ([0.001, 0.2], [True, False], [0.002, 0.2]),
        ([nan, nan], [False, False], [nan, nan]),
        ([], [], []),
        ([0.0], [True], [0.0]),
    ],
)
def test_holm(p, reject, adjusted):
    r, adj = holm(np.array(p, dtype=float), 0.05)
    assert r.tolist() == reject
    np.testing.assert_allclose(adj, adjusted)


# --- compare_arms ---


def test_compare_arms_identical_arms():
    a, _ = arms([0.8, 0.7, 0.9], [0.5] * 3, n=200, seed=1)
    r = compare_arms(a, a.copy(), n_boot=500, confidence=0.95, seed=0)
    assert r["diff"] == 0 and r["diffs_points"] == "0.00;0.00;0.00"
    assert r["ci_low"] <= 0 <= r["ci_high"] and r["boot_low"] <= 0 <= r["boot_high"]
    assert r["p"] == 1.0 and r["n_a_only"] == r["n_b_only"] == 0 and r["p_mcnemar_seeds"] == "1;1;1"
    assert r["acc_a"] == r["acc_b"]


def test_compare_arms_fields():
    a, b = arms([0.85, 0.8, 0.9], [0.8, 0.8, 0.8], n=300, seed=2)
    r = compare_arms(a, b, n_boot=1000, confidence=0.95, seed=4)
    diffs = a.mean(axis=1) - b.mean(axis=1)
    np.testing.assert_allclose(r["diffs"], diffs)
    assert r["diffs_points"] == ";".join(f"{100 * d:.2f}" for d in diffs)
    si = seed_interval(diffs, 0.95)
    assert (r["diff"], r["sd"], r["ci_low"], r["ci_high"], r["p"]) == (
        si["mean"],
        si["sd"],
        si["low"],
        si["high"],
        si["p"],
    )
    assert r["boot_low"] < r["diff"] < r["boot_high"]
    assert r["n_a_only"] == int(np.sum((a == 1) & (b == 0))) and r["n_b_only"] == int(np.sum((a == 0) & (b == 1)))
    assert len(r["p_mcnemar_seeds"].split(";")) == 3
    assert (r["n_seeds"], r["n_examples"]) == (3, 300)
    again = compare_arms(a, b, n_boot=1000, confidence=0.95, seed=4)
    assert (again["boot_low"], again["boot_high"]) == (r["boot_low"], r["boot_high"])  # seeded: reproducible


def test_compare_arms_one_seed():
    a, b = arms([0.9], [0.7], n=100, seed=0)
    r = compare_arms(a, b, n_boot=200, confidence=0.95, seed=0)
    assert r["n_seeds"] == 1 and math.isnan(r["ci_low"]) and math.isnan(r["p"])
    assert r["boot_low"] <= r["diff"] <= r["boot_high"]


@pytest.mark.parametrize("diffs, text", [([0.0123, -0.004], "1.23;-0.40"), ([-0.00001, 0.0], "0.00;0.00"), ([], "")])
def test_points(diffs, text):
    assert points(np.array(diffs)) == text


def test_module_is_pure():
    with open(stats.__file__) as f:
        src = f.read()
    assert "open(" not in src and "print(" not in src
    assert len(src.splitlines()) < 300
