"""CKA: identities, invariances, the two linear formulas, and a reference after Kornblith et al.'s demo."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from inflection_layers.cka import cka_rows
from inflection_layers.similarity import (
    debiased_cka,
    delta_cka,
    linear_cka,
    linear_cka_gram,
    shared_pca,
    standardize,
)

CKAS = [linear_cka, linear_cka_gram, debiased_cka]
SHAPES = [(50, 10, 10), (12, 40, 25), (30, 30, 7)]  # (N, D1, D2): N > D and N < D


def pair(n: int, d1: int, d2: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Related random X (N, D1), Y (N, D2): Y is a noisy linear map of X."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d1)) + 0.5
    return X, X @ rng.normal(size=(d1, d2)) + rng.normal(size=(n, d2))


# Reference: google-research representation_similarity Demo (gram_linear, center_gram, cka), rewritten.
def ref_gram_linear(x: np.ndarray) -> np.ndarray:
    return x @ x.T


def ref_center_gram(gram: np.ndarray, unbiased: bool = False) -> np.ndarray:
    gram = gram.astype(np.float64, copy=True)
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = gram.mean(axis=0)
        means -= means.mean() / 2
    gram -= means[:, None] + means[None, :]
    if unbiased:
        np.fill_diagonal(gram, 0.0)
    return gram


def ref_cka(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool = False) -> float:
    gx, gy = ref_center_gram(gram_x, debiased), ref_center_gram(gram_y, debiased)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


@pytest.mark.parametrize("cka", CKAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_self_similarity_is_one(cka, shape):
    X, _ = pair(*shape)
    assert cka(X, X) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("method", ["linear", "debiased"])
@pytest.mark.parametrize("pca_dim", [None, 8, 256])
@pytest.mark.parametrize("standardized", [False, True])
def test_delta_cka_of_identical_is_zero(method, pca_dim, standardized):
    X, _ = pair(30, 20, 20)
    d = delta_cka(X, X, pca_dim=pca_dim, method=method, standardized=standardized)
    assert d == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("cka", CKAS)
@pytest.mark.parametrize("transform", ["orthogonal", "scale"])
def test_invariances(cka, transform):
    X, Y = pair(40, 12, 9)
    if transform == "orthogonal":
        Xt, Yt = X @ ortho_group.rvs(12, random_state=1), Y @ ortho_group.rvs(9, random_state=2)
    else:
        Xt, Yt = 3.7 * X, 0.01 * Y
    assert cka(Xt, Yt) == pytest.approx(cka(X, Y), abs=1e-10)


@pytest.mark.parametrize("cka", CKAS)
def test_not_invariant_to_general_linear_map(cka):
    X, Y = pair(40, 12, 9)
    A = np.diag(np.geomspace(0.1, 10, 12)) @ ortho_group.rvs(12, random_state=3)  # invertible, not orthogonal
    assert abs(cka(X @ A, Y) - cka(X, Y)) > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_feature_and_gram_formulas_agree(shape, seed):
    X, Y = pair(*shape, seed=seed)
    assert linear_cka(X, Y) == pytest.approx(linear_cka_gram(X, Y), abs=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_matches_reference(shape, debiased):
    X, Y = pair(*shape, seed=5)
    ref = ref_cka(ref_gram_linear(X), ref_gram_linear(Y), debiased=debiased)
    got = debiased_cka(X, Y) if debiased else linear_cka(X, Y)
    assert got == pytest.approx(ref, abs=1e-6)
    if not debiased:
        assert linear_cka_gram(X, Y) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize(
    "n,d,dim,k",
    [(20, 8, 256, 8), (5, 30, 256, 10), (20, 30, 4, 4), (20, 30, 40, 30)],  # k = min(dim, 2N, D)
)
def test_shared_pca_shapes_and_cap(n, d, dim, k):
    X, Y = pair(n, d, d)
    Px, Py = shared_pca(X, Y, dim)
    assert Px.shape == Py.shape == (n, k)
    Qx, Qy = shared_pca(X, Y, dim)
    assert np.array_equal(Px, Qx) and np.array_equal(Py, Qy)  # deterministic


@pytest.mark.parametrize("n,d", [(20, 8), (5, 30), (15, 15)])
def test_shared_pca_full_rank_keeps_cka(n, d):
    X, Y = pair(n, d, d)
    Px, Py = shared_pca(X, Y, 10_000)
    assert linear_cka(Px, Py) == pytest.approx(linear_cka(X, Y), abs=1e-10)
    assert delta_cka(X, Y, pca_dim=10_000) == pytest.approx(delta_cka(X, Y, pca_dim=None), abs=1e-10)


def test_standardize():
    X, _ = pair(30, 6, 6)
    X[:, 2] = 4.0
    Z = standardize(X.astype(np.float16))
    assert Z.dtype == np.float64 and np.isfinite(Z).all()
    assert np.allclose(Z.mean(axis=0), 0.0)
    assert np.allclose(np.delete(Z.std(axis=0), 2), 1.0) and np.all(Z[:, 2] == 0.0)


def test_standardize_removes_dominant_dimension():
    rng = np.random.default_rng(0)
    big = 100.0 * rng.normal(size=(50, 1))  # one shared dominant dimension
    X, Y = np.hstack([big, rng.normal(size=(50, 10))]), np.hstack([big, rng.normal(size=(50, 10))])
    assert delta_cka(X, Y, pca_dim=None) < 0.01
    assert delta_cka(X, Y, pca_dim=None, standardized=True) > 0.3


@pytest.mark.parametrize("cka", CKAS)
def test_constant_representation_is_nan(cka):
    X, _ = pair(10, 4, 4)
    assert np.isnan(cka(X, np.full((10, 3), 0.1)))


NAN_X = np.ones((10, 3))
NAN_X[0, 0] = np.nan


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: linear_cka(np.ones((5, 2)), np.ones((6, 2))), "same number"),
        (lambda: linear_cka_gram(np.ones((5, 2)), np.ones((6, 2))), "same number"),
        (lambda: linear_cka(np.ones((1, 2)), np.ones((1, 2))), "at least 2"),
        (lambda: debiased_cka(np.eye(3), np.eye(3)), "at least 4"),
        (lambda: delta_cka(np.eye(3), np.eye(3), pca_dim=None, method="debiased"), "at least 4"),
        (lambda: linear_cka(NAN_X, np.ones((10, 3))), "finite"),
        (lambda: debiased_cka(np.ones((10, 3)), np.where(np.isnan(NAN_X), np.inf, 1.0)), "finite"),
        (lambda: delta_cka(NAN_X, np.ones((10, 3)), pca_dim=None), "finite"),
        (lambda: delta_cka(np.eye(5), np.eye(5), pca_dim=None, method="rbf"), "'linear', 'debiased'"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cka_rows_give_every_variant_per_layer_and_skip_a_constant_layer():
    """The stage's per-layer rows: layer -1 (a constant [CLS], as the embeddings' is) has none; the others carry
    delta_cka equal to delta_cka() of that layer in the shared basis."""
    rng = np.random.default_rng(0)
    before = rng.normal(size=(3, 20, 16)).astype(np.float16)
    before[0] = before[0, :1]  # every sentence the same vector
    after = (before + 0.5 * rng.normal(size=before.shape)).astype(np.float16)
    after[0] = before[0]
    rows = cka_rows(before, after, 8, strategy="full")
    assert sorted({r["layer"] for r in rows}) == [0, 1] and {r["strategy"] for r in rows} == {"full"}
    for layer in (0, 1):
        got = {r["metric"]: r["value"] for r in rows if r["layer"] == layer}
        assert set(got) == {"delta_cka", "delta_cka_debiased", "delta_cka_standardized"}
        b, a = before[layer + 1].astype(np.float64), after[layer + 1].astype(np.float64)
        assert got["delta_cka"] == pytest.approx(delta_cka(b, a, pca_dim=8), abs=1e-12)


def test_float16_rounding_of_a_constant_vector_is_still_constant() -> None:
    """The embeddings' [CLS] saved as float16 from batches of different shapes: equal up to one unit in the last
    place."""
    from inflection_layers.similarity import linear_cka

    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 16)).astype(np.float16)
    ulp = np.spacing(np.abs(base)).astype(np.float16)
    X = np.repeat(base, 50, axis=0) + ulp * rng.integers(0, 2, size=(50, 16)).astype(np.float16)
    Y = rng.normal(size=(50, 16))
    assert np.isnan(linear_cka(X.astype(np.float64), Y))
    assert not np.isnan(linear_cka(Y + 0.01 * rng.normal(size=Y.shape), Y))
