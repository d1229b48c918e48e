"""Tables of (input, expected) for the pure layer-selection functions (inflection_layers.bands) and the `select` stage's
grouping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inflection_layers.bands import (
    cap_band,
    complement,
    greedy_centers,
    local_maxima,
    random_bands,
    select_band,
    ski_scores,
    top_band,
    top_k,
    widen,
)
from inflection_layers.cells import Group
from inflection_layers.config import Ski
from inflection_layers.select import draw_rng, select_group

# H/max = [.25, .5, 1], G/max = [1, .5, .25]  ->  1 - . = [.75, .5, 0] and [0, .5, .75]
H3, G3 = [1.0, 2.0, 4.0], [4.0, 2.0, 1.0]


@pytest.mark.parametrize(
    "entropy, act_grad, alpha, expected",
    [
        (H3, G3, 0.5, [0.375, 0.5, 0.375]),
        (H3, G3, 0.25, [0.1875, 0.5, 0.5625]),
        (H3, G3, 1.0, [0.75, 0.5, 0.0]),  # entropy only
        (H3, G3, 0.0, [0.0, 0.5, 0.75]),  # gradient only
        ([0.0, 0.0], [1.0, 2.0], 0.5, [0.75, 0.5]),  # all-zero entropy: H/max H taken as 0
        ([0.0, 0.0], [0.0, 0.0], 0.3, [1.0, 1.0]),
        ([3.0], [5.0], 0.5, [0.0]),  # L = 1
    ],
)
def test_ski_scores(entropy, act_grad, alpha, expected):
    np.testing.assert_allclose(ski_scores(np.array(entropy), np.array(act_grad), alpha), expected)


@pytest.mark.parametrize(
    "entropy, act_grad, alpha, match",
    [
        ([1.0, -0.1], [1.0, 1.0], 0.5, "non-negative"),
        ([1.0, 1.0], [1.0, -2.0], 0.5, "non-negative"),
        ([1.0, np.nan], [1.0, 1.0], 0.5, "finite"),
        ([1.0, 1.0], [np.inf, 1.0], 0.5, "finite"),
        ([1.0, 2.0], [1.0, 2.0, 3.0], 0.5, "same shape"),
        ([[1.0, 2.0]], [[1.0, 2.0]], 0.5, "1-D"),
        ([], [], 0.5, "at least one layer"),
        ([1.0, 2.0], [1.0, 2.0], -0.1, "alpha"),
        ([1.0, 2.0], [1.0, 2.0], 1.5, "alpha"),
        ([1.0, 2.0], [1.0, 2.0], np.nan, "alpha"),
    ],
)
def test_ski_scores_invalid(entropy, act_grad, alpha, match):
    with pytest.raises(ValueError, match=match):
        ski_scores(np.array(entropy), np.array(act_grad), alpha)


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([0.1, 0.5, 0.2], [1]),
        ([0.9, 0.5, 0.2], [0]),  # maximum at index 0
        ([0.1, 0.5, 0.8], [2]),  # maximum at the last layer
        ([0.1, 0.5, 0.2, 0.7, 0.3], [1, 3]),
        ([0.5, 0.5, 0.5, 0.5], [0]),  # all equal -> [argmax]
        ([0.3], [0]),  # L = 1
        ([0.1, 0.6, 0.6, 0.6, 0.2], [1]),  # plateau: first index only
        ([0.6, 0.6, 0.2], [0]),  # plateau at the start
        ([0.2, 0.6, 0.6], [1]),  # plateau at the end
        ([0.1, 0.4, 0.4, 0.9], [3]),  # shoulder plateau is not a maximum
        ([0.7, 0.2, 0.7], [0, 2]),  # tied maxima: both kept
        ([0.0, 0.0, 1.0, 0.0], [2]),
    ],
)
def test_local_maxima(scores, expected):
    assert local_maxima(np.array(scores)) == expected


@pytest.mark.parametrize("scores", [[], [[0.1, 0.2]], [0.1, np.nan]])
def test_local_maxima_invalid(scores):
    with pytest.raises(ValueError):
        local_maxima(np.array(scores))


@pytest.mark.parametrize(
    "centers, s, num_layers, expected",
    [
        ([5], 1, 12, [4, 5, 6]),
        ([0], 2, 12, [0, 1, 2]),  # clipped at the bottom
        ([11], 2, 12, [9, 10, 11]),  # clipped at the top
        ([3, 5], 1, 12, [2, 3, 4, 5, 6]),  # overlapping windows
        ([3, 4], 1, 12, [2, 3, 4, 5]),
        ([1, 8], 0, 12, [1, 8]),  # s = 0
        ([8, 1, 8], 0, 12, [1, 8]),  # unsorted, duplicated
        ([0], 3, 1, [0]),  # L = 1
        ([], 2, 12, []),
    ],
)
def test_widen(centers, s, num_layers, expected):
    assert widen(centers, s, num_layers) == expected


@pytest.mark.parametrize("centers, s, num_layers", [([1], -1, 12), ([12], 1, 12), ([-1], 1, 12), ([0], 1, 0)])
def test_widen_invalid(centers, s, num_layers):
    with pytest.raises(ValueError):
        widen(centers, s, num_layers)


SC = [0.1, 0.9, 0.5, 0.5, 0.8, 0.2]


@pytest.mark.parametrize(
    "band, max_band, expected",
    [
        ([0, 1, 2, 3, 4], None, [0, 1, 2, 3, 4]),  # no cap
        ([0, 1, 2, 3, 4], 5, [0, 1, 2, 3, 4]),  # cap not reached
        ([0, 1, 2, 3, 4], 2, [1, 4]),
        ([0, 1, 2, 3, 4], 3, [1, 2, 4]),  # tie 2 vs 3: lower index first
        ([2, 3], 1, [2]),  # tie only
        ([5, 0], 1, [5]),  # returned sorted; 0.2 > 0.1
    ],
)
def test_cap_band(band, max_band, expected):
    assert cap_band(band, np.array(SC), max_band) == expected


@pytest.mark.parametrize("max_band", [0, -1])
def test_cap_band_invalid(max_band):
    with pytest.raises(ValueError, match="max_band"):
        cap_band([0, 1], np.array(SC), max_band)


@pytest.mark.parametrize(
    "entropy, act_grad, threshold, expected",
    [
        ([3.0, 1.0, 2.0, 4.0], [1.0, 0.9, 0.8, 0.7], 0.5, [1]),  # no layer below threshold
        ([3.0, 1.0, 2.0, 4.0], [1.0, 0.9, 0.3, 0.1], 0.5, [1, 2]),  # first below: 2, not 3
        ([3.0, 1.0, 2.0, 4.0], [1.0, 0.4, 0.3, 0.1], 0.5, [1]),  # same layer: deduplicated
        ([1.0, 1.0, 2.0], [1.0, 1.0, 1.0], 0.5, [0]),  # entropy tie -> lowest index
        ([2.0, 2.0, 1.0], [0.0, 0.0, 0.0], 0.5, [0, 2]),  # max G == 0: every layer below
        ([5.0], [2.0], 0.5, [0]),  # L = 1
    ],
)
def test_greedy_centers(entropy, act_grad, threshold, expected):
    assert greedy_centers(np.array(entropy), np.array(act_grad), threshold) == expected


# 6 layers, one clear SKI peak at layer 3: low entropy and low gradient there
H6 = np.array([4.0, 3.5, 3.0, 1.0, 2.5, 3.8])
G6 = np.array([1.0, 0.9, 0.6, 0.2, 0.5, 0.8])


@pytest.mark.parametrize(
    "method, s, threshold, max_band, candidates, band",
    [
        ("local_max", 1, 0.5, None, [3], [2, 3, 4]),
        ("local_max", 0, 0.5, None, [3], [3]),
        ("local_max", 2, 0.5, 3, [3], [2, 3, 4]),  # cap keeps the top-3 SKI layers
        ("greedy", 1, 0.5, None, [3], [2, 3, 4]),  # argmin H = first G/max < .5 = 3
        ("greedy", 0, 0.7, None, [2, 3], [2, 3]),  # first G/max < .7 is layer 2
        ("greedy", 1, 0.1, None, [3], [2, 3, 4]),  # no layer below threshold
    ],
)
def test_select_band(method, s, threshold, max_band, candidates, band):
    out = select_band(H6, G6, method=method, alpha=0.5, s=s, threshold=threshold, max_band=max_band)
    assert out["candidates"] == candidates and out["band"] == band
    np.testing.assert_allclose(out["scores"], ski_scores(H6, G6, 0.5))
    assert all(isinstance(v, float) for v in out["scores"]) and all(isinstance(v, int) for v in out["band"])
    assert out == select_band(H6, G6, method=method, alpha=0.5, s=s, threshold=threshold, max_band=max_band)


def test_select_band_unknown_method():
    with pytest.raises(ValueError, match="local_max, greedy"):
        select_band(H6, G6, method="argmax", alpha=0.5, s=1, threshold=0.5, max_band=None)


def test_the_paper_greedy_rule_reproduces_its_band_on_a_12_layer_profile():
    """Section 5 as the paper runs it: entropy minimum at layer 5, the first normalised activation
    gradient below 0.25 at layer 0, each widened by +-1, no cap -> {0, 1, 4, 5, 6}."""
    entropy = np.array([2.0, 1.9, 1.8, 1.6, 1.3, 1.1, 1.2, 1.5, 1.7, 1.8, 1.9, 2.0])  # minimum at 5
    act_grad = np.array([0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.9, 0.8, 0.7, 0.6])  # 0.2 / 1.0 < 0.25 at layer 0
    out = select_band(entropy, act_grad, method="greedy", alpha=0.5, s=1, threshold=0.25, max_band=None)
    assert out["candidates"] == [0, 5] and out["band"] == [0, 1, 4, 5, 6]


def _group(regime: str = "over", target: str = "rt", seed: int = 42) -> Group:
    return Group(target, regime, seed)


@pytest.mark.parametrize(
    "num_layers, band, draws",
    [
        (12, [0, 1, 4, 5, 6], 5),
        (12, [4, 5, 6], 5),
        (6, [4, 5], 5),
        (6, [3, 4, 5], 19),
        (24, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 5),
    ],
)
def test_random_bands_are_distinct_bands_of_the_bands_size_never_the_band(num_layers, band, draws):
    rand = random_bands(num_layers, band, draws, draw_rng(_group()))
    assert len(rand) == draws and len({tuple(r["layers"]) for r in rand}) == draws  # without replacement
    for r in rand:
        assert len(r["layers"]) == len(band) and r["layers"] != band and r["layers"] == sorted(r["layers"])
        assert r["overlap"] == len(set(r["layers"]) & set(band)) and r["mean_layer"] == pytest.approx(
            np.mean(r["layers"])
        )
        assert all(isinstance(i, int) and 0 <= i < num_layers for i in r["layers"])


@pytest.mark.parametrize(
    "num_layers, band, expected", [(6, [3, 4, 5], 19), (6, [0], 5), (4, [0, 1, 2, 3], 0), (12, [4, 5, 6], 219)]
)
def test_every_band_is_c_l_k_minus_one(num_layers, band, expected):
    """`ski.random_draws: all` trains every other band of the size: C(L, k) - 1 (MiniLM, a 3-layer band: 19)."""
    rand = random_bands(num_layers, band, None, draw_rng(_group()))
    assert len(rand) == expected and band not in [r["layers"] for r in rand]


def test_random_bands_have_the_depth_of_all_bands_not_only_the_layers_outside_the_band():
    """Uniform over every band of size 3 on 12 layers but the band: the mean depth of many draws is the middle (5.5),
    and draws overlap the band, so a band at the top is compared with bands at every depth."""
    many = random_bands(12, [9, 10, 11], 200, np.random.default_rng(0))
    assert np.mean([r["mean_layer"] for r in many]) == pytest.approx(5.5, abs=0.35)
    assert any(r["overlap"] > 0 for r in many) and max(r["mean_layer"] for r in many) > 9


def test_random_bands_differ_between_regimes_and_are_deterministic():
    over = random_bands(12, [4, 5, 6], 5, draw_rng(_group("over")))
    under = random_bands(12, [4, 5, 6], 5, draw_rng(_group("under")))
    assert over == random_bands(12, [4, 5, 6], 5, draw_rng(_group("over"))) and over != under


@pytest.mark.parametrize(
    "num_layers, k, expected", [(6, 3, [3, 4, 5]), (6, 1, [5]), (12, 5, [7, 8, 9, 10, 11]), (3, 3, [0, 1, 2])]
)
def test_top_band(num_layers, k, expected):
    assert top_band(num_layers, k) == expected


@pytest.mark.parametrize("bad", [0, 7])
def test_top_band_refuses_a_size_outside_the_model(bad):
    with pytest.raises(ValueError, match="k must be in"):
        top_band(6, bad)


@pytest.mark.parametrize(
    "values, k, expected", [([0.1, 0.5, 0.5, 0.2], 2, [1, 2]), ([3.0, 1.0, 2.0], 1, [0]), ([0.0, 0.0, 0.0], 2, [0, 1])]
)
def test_top_k(values, k, expected):
    assert top_k(np.array(values), k) == expected


@pytest.mark.parametrize(
    "band, scores, expected",
    [([4, 5], [0.1, 0.3, 0.2, 0.0, 0.9, 0.8], [0, 3]), ([0, 1, 2, 3], [0.5, 0.5, 0.5, 0.5, 0.1, 0.2], [4, 5])],
)
def test_complement_takes_the_lowest_scoring_layers_outside_the_band(band, scores, expected):
    assert complement(band, np.array(scores)) == expected


def test_select_group_gives_every_band_at_the_band_size():
    layers = [
        {"layer": l, "metric": m, "value": v}
        for l in range(6)
        for m, v in (
            ("entropy", H6[l]),
            ("act_grad", G6[l]),
            ("rgn", [0.1, 0.2, 0.9, 0.3, 0.8, 0.4][l]),
            ("io_change", [0.5, 0.1, 0.2, 0.3, 0.4, 0.6][l]),
        )
    ]
    layers.append({"layer": -1, "metric": "act_grad", "value": 9.0})
    p = Ski(method="local_max", alpha=0.5, s=1, threshold=0.25, max_band=None, random_draws=3)
    result, table = select_group(pd.DataFrame(layers), p, _group())
    assert result["band"] == [2, 3, 4] and result["rgn"] == [2, 4, 5] and result["cka"] == [0, 4, 5]
    assert result["complement"] == [0, 1, 5] or len(result["complement"]) == 3
    assert len(result["random"]) == 3 and all(len(r["layers"]) == 3 for r in result["random"])
    assert result["top"] == [3, 4, 5] and result["top_is_band"] is False
    assert list(table["in_band"]) == [0, 0, 1, 1, 1, 0] and list(table["in_top"]) == [0, 0, 0, 1, 1, 1]
