"""Statistics of the study's report: two arms compared over seeds, the seed as the unit of replication.

An *arm* is one regime x strategy; ``a`` and ``b`` are its (S, N) 0/1 "prediction right" arrays over S
seeds (rows, paired by seed) and N evaluation examples (columns, paired by position). The primary
quantity is the per-seed paired difference ``acc_a[s] - acc_b[s]`` (S,), analysed with a one-sample
t-test / t-interval and TOST, a prospective t-test power analysis, the band tests; a hierarchical bootstrap
(seeds, then examples) and per-seed exact McNemar tests are secondary. Every difference is a fraction of 1.
Pure functions, no I/O; the computations themselves are scipy's and statsmodels'.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import integrate, stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW

_CHUNK = 256  # bootstrap resamples drawn per block (memory: _CHUNK * S * N indices)


def _diffs(diffs: np.ndarray) -> np.ndarray:
    """diffs as a finite 1-D float64 array (S,)."""
    x = np.asarray(diffs, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError(f"per-seed differences must be finite, got {x.tolist()}")
    return x


def _constant(x: np.ndarray) -> bool:
    """True when every value of x (S,) is the same (exactly: sd == 0, free of rounding noise)."""
    return bool(np.all(x == x[0]))


def _arms(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a, b as (S, N) float64 arrays of one shape, S >= 1 and N >= 1 (a 1-D array is one seed)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be non-empty (S, N) arrays of one shape, got {a.shape} and {b.shape}")
    return a, b


def seed_interval(diffs: np.ndarray, confidence: float) -> dict:
    """Mean, sd (ddof 1), n, two-sided t-interval (low, high) and one-sample t-test p (H0: mean 0) of diffs (S,).

    S == 0: everything nan (n 0). S == 1: the mean only; sd, low, high and p nan.
    sd == 0 with S >= 2 (all seeds agree exactly): the interval is the point (low = high = mean) and
    p = 0 when mean != 0, else 1 (the limits of the t-test as sd -> 0).
    """
    x = _diffs(diffs)
    out = {"mean": math.nan, "sd": math.nan, "n": int(x.size), "low": math.nan, "high": math.nan, "p": math.nan}
    if x.size == 0:
        return out
    out["mean"] = float(x.mean())
    if x.size < 2:
        return out
    if _constant(x):
        m = float(x[0])
        return out | {"mean": m, "sd": 0.0, "low": m, "high": m, "p": 0.0 if m != 0 else 1.0}
    low, high = DescrStatsW(x).tconfint_mean(alpha=1 - confidence)
    p = stats.ttest_1samp(x, 0.0).pvalue
    return out | {"sd": float(x.std(ddof=1)), "low": float(low), "high": float(high), "p": float(p)}


def hierarchical_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(mean of acc_a - acc_b over seeds, percentile low, percentile high) of a two-stage bootstrap; a, b (S, N) 0/1.

    Each resample draws S seeds with replacement, then for each drawn seed N examples with replacement
    (independently per drawn seed), the same example indices for A and B; its statistic is the mean over
    the drawn seeds of acc_A - acc_B. Draw order (for reproducibility): per block of up to ``_CHUNK``
    resamples, ``rng.integers(0, S, (B, S))`` then ``rng.integers(0, N, (B, S, N))``.
    """
    a, b = _arms(a, b)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    d = a - b  # (S, N) per-example differences
    S, N = d.shape
    boots = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        B = min(_CHUNK, n_boot - start)
        seeds = rng.integers(0, S, size=(B, S))  # (B, S) drawn seeds
        examples = rng.integers(0, N, size=(B, S, N))  # (B, S, N) drawn examples per drawn seed
        boots[start : start + B] = d[seeds[:, :, None], examples].mean(axis=(1, 2))
    low, high = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(d.mean()), float(low), float(high)


def equivalence_test(diffs: np.ndarray, margin: float, alpha: float) -> dict:
    """TOST of diffs (S,) against the equivalence interval (-margin, +margin) (statsmodels ttost_mean).

    Returns mean, sd, n, margin, p (= max of the two one-sided p), p_lower (H0: mean <= -margin),
    p_upper (H0: mean >= +margin), equivalent (p < alpha) and low, high: the (1 - 2 alpha) t-interval,
    which lies inside (-margin, margin) exactly when equivalent. S < 2: p nan, not equivalent, interval nan.
    sd == 0 (S >= 2): the interval is the point; equivalent iff |mean| < margin, with p 0 if so, else 1.
    """
    x = _diffs(diffs)
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a positive finite number, got {margin}")
    base = seed_interval(x, 1 - 2 * alpha)
    out = {
        "mean": base["mean"],
        "sd": base["sd"],
        "n": base["n"],
        "margin": float(margin),
        "p": math.nan,
        "p_lower": math.nan,
        "p_upper": math.nan,
        "equivalent": False,
        "low": math.nan,
        "high": math.nan,
    }
    if x.size < 2:
        return out
    out |= {"low": base["low"], "high": base["high"]}
    if base["sd"] == 0:
        m = base["mean"]
        p_lo, p_up = float(not m > -margin), float(not m < margin)
        return out | {"p": max(p_lo, p_up), "p_lower": p_lo, "p_upper": p_up, "equivalent": abs(m) < margin}
    p, (_, p_lo, _), (_, p_up, _) = DescrStatsW(x).ttost_mean(-margin, margin)
    return out | {"p": float(p), "p_lower": float(p_lo), "p_upper": float(p_up), "equivalent": bool(p < alpha)}


def t_test_power(effect_size: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test (n observations, standardised effect): the normal tail integrated
    over the quantiles u of the sample variance's chi-square, finite where scipy's noncentral t gives nan."""
    df, nc = n - 1, effect_size * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)

    def rejects(u: float) -> float:
        c = crit * math.sqrt(stats.chi2.ppf(u, df) / df)
        return stats.norm.sf(c - nc) + stats.norm.cdf(-c - nc)

    return float(integrate.quad(rejects, 0, 1, limit=200)[0])


MOST_SEEDS = 1_000_000  # seeds_needed's search bound: beyond it, inf


def seeds_needed(d: float, sd: float, alpha: float, power: float, most: int = MOST_SEEDS) -> float:
    """Prospectively: the fewest seeds (>= 2) with which a two-sided one-sample t-test over per-seed differences
    detects a mean of d with `power`, given a seed-level sd (statsmodels TTestPower); nan without an sd, 2 when sd is
    0, inf beyond `most`. Searched over whole seeds (power rises with n): statsmodels' root finder returned nan for
    large effects, where its noncentral t is nan in the far tail (`t_test_power` is used there)."""
    if d is None or sd is None or not (math.isfinite(d) and math.isfinite(sd)) or d == 0:
        return math.nan
    if sd == 0:
        return 2.0

    es, solver = abs(d) / sd, TTestPower()

    def enough(n: int) -> bool:
        value = solver.power(effect_size=es, nobs=n, alpha=alpha, alternative="two-sided")
        return (value if math.isfinite(value) else t_test_power(es, n, alpha)) >= power

    low, high = 2, most
    if enough(low):
        return 2.0
    if not enough(high):
        return math.inf
    while high - low > 1:  # invariant: not enough(low), enough(high)
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return float(high)


def band_rank_test(bands: pd.DataFrame, seed: int, n_sim: int = 100_000) -> dict:
    """The SKI band's rank among its group's bands (rows band == 'ski' and the random draws), pooled over groups.

    Per group the statistic is the share of the other bands below SKI (ties count half); under the null that SKI is
    one more band of its size, its position among the n + 1 is uniform, so the pooled mean share is compared with
    `n_sim` simulated means (a permutation test, one-sided). Returns mean_share, p and a sentence with each rank.
    """
    shares, sizes, ranks = [], [], []
    for group, g in bands.groupby("group", sort=False):
        ski, others = g.loc[g["band"] == "ski", "accuracy"], g.loc[g["band"] != "ski", "accuracy"].to_numpy()
        if len(ski) and len(others):
            x = float(ski.iloc[0])
            shares.append(((others < x).sum() + 0.5 * (others == x).sum()) / len(others))
            sizes.append(len(others))
            ranks.append(f"{group} rank {1 + int((others > x).sum())} of {1 + len(others)}")
    if not shares:
        return {"mean_share": math.nan, "p": math.nan, "text": "no group has SKI and random bands"}
    rng = np.random.default_rng(seed)
    sims = np.mean([rng.integers(0, n + 1, n_sim) / n for n in sizes], axis=0)
    observed = float(np.mean(shares))
    return {
        "mean_share": observed,
        "p": float((np.sum(sims >= observed - 1e-12) + 1) / (n_sim + 1)),
        "text": f"mean share of bands below SKI {observed:.2f} ({'; '.join(ranks)}; rank 1: the most accurate)",
    }


def depth_trend(bands: pd.DataFrame) -> dict | None:
    """Accuracy against a band's mean layer *within* groups (group intercepts; the band's overlap with SKI, and its size
    where it varies within a group, as covariates), fitted on the other bands; SKI's distance from that trend per group.

    Returns mean, low, high (the t-interval over groups of SKI's residual), slope (accuracy per layer) and a sentence;
    None with fewer than two groups or too few bands to fit."""
    import statsmodels.formula.api as smf

    other = bands[bands["band"] != "ski"]
    ski = bands[bands["band"] == "ski"]
    varies = (other.groupby("group")["size"].nunique() > 1).any()
    formula = "accuracy ~ C(group) + mean_layer + overlap" + (" + size" if varies else "")
    if other["group"].nunique() < 2 or len(other) < other["group"].nunique() + 3 or ski.empty:
        return None
    fit = smf.ols(formula, data=other).fit()
    ski = ski[ski["group"].isin(other["group"])]
    residual = (ski["accuracy"] - fit.predict(ski)).to_numpy()
    si = seed_interval(residual, 0.95)
    slope = float(fit.params.get("mean_layer", math.nan))
    text = (
        f"SKI lies {100 * si['mean']:+.2f} points from the within-group trend (95% t-interval over {si['n']} groups "
        f"[{100 * si['low']:+.2f}, {100 * si['high']:+.2f}]); the trend is {100 * slope:+.2f} points per layer of depth"
    )
    return {"mean": si["mean"], "low": si["low"], "high": si["high"], "slope": slope, "text": text}


def partial_spearman(x: pd.Series, y: pd.Series, z: pd.Series) -> float:
    """Spearman's rho of x and y partial on z: the Pearson correlation of the ranks' residuals after a linear fit on
    z's ranks."""
    rx, ry, rz = (np.asarray(stats.rankdata(v), dtype=float) for v in (x, y, z))
    design = np.column_stack([np.ones_like(rz), rz])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    if min(np.std(r) for r in res) == 0:
        return math.nan
    return float(np.corrcoef(res[0], res[1])[0, 1])


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test of one seed on 'right' arrays a, b (N,): (A-only right, B-only right, two-sided p).

    statsmodels mcnemar(exact=True); p = 1 without discordant pairs.
    """
    a, b = np.asarray(a, dtype=bool).reshape(-1), np.asarray(b, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {a.shape} and {b.shape}")
    n_ab, n_ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n_ab + n_ba == 0:
        return n_ab, n_ba, 1.0
    table = [[int(np.sum(a & b)), n_ab], [n_ba, int(np.sum(~a & ~b))]]
    return n_ab, n_ba, float(mcnemar(table, exact=True).pvalue)


def holm(pvalues: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction of pvalues (K,) (statsmodels multipletests): (reject (K,) bool, p_adjusted (K,)).

    nan p-values are left out of the family: their p_adjusted stays nan and they are not rejected.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    reject, adjusted = np.zeros(p.size, dtype=bool), np.full(p.size, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        reject[ok], adjusted[ok], _, _ = multipletests(p[ok], alpha=alpha, method="holm")
    return reject, adjusted


def points(diffs: np.ndarray) -> str:
    """diffs (S,) as accuracy points with 2 decimals joined by ';' (never '-0.00')."""
    return ";".join(f"{round(100 * float(d), 2) + 0.0:.2f}" for d in np.asarray(diffs).reshape(-1))


def compare_arms(a: np.ndarray, b: np.ndarray, *, n_boot: int, confidence: float, seed: int) -> dict:
    """Every statistic of one comparison of arms a, b (S, N) 0/1 (fractions of 1, A - B).

    Keys: n_seeds, n_examples, acc_a, acc_b, diffs (S,) array, diffs_points ('1.23;-0.40;...'),
    diff, sd, ci_low, ci_high, p (seed t-test: :func:`seed_interval`), boot_low, boot_high
    (:func:`hierarchical_bootstrap`, generator seeded with `seed`), n_a_only, n_b_only (discordant pairs
    summed over seeds) and p_mcnemar_seeds (each seed's exact p, ';'-joined; secondary, per example).
    """
    a, b = _arms(a, b)
    diffs = a.mean(axis=1) - b.mean(axis=1)  # (S,)
    si = seed_interval(diffs, confidence)
    _, boot_low, boot_high = hierarchical_bootstrap(a, b, n_boot, confidence, np.random.default_rng(seed))
    tests = [mcnemar_exact(x, y) for x, y in zip(a, b, strict=False)]
    return {
        "n_seeds": int(a.shape[0]),
        "n_examples": int(a.shape[1]),
        "acc_a": float(a.mean()),
        "acc_b": float(b.mean()),
        "diffs": diffs,
        "diffs_points": points(diffs),
        "diff": si["mean"],
        "sd": si["sd"],
        "ci_low": si["low"],
        "ci_high": si["high"],
        "p": si["p"],
        "boot_low": boot_low,
        "boot_high": boot_high,
        "n_a_only": sum(t[0] for t in tests),
        "n_b_only": sum(t[1] for t in tests),
        "p_mcnemar_seeds": ";".join(f"{t[2]:.4g}" for t in tests),
    }
