"""Centered kernel alignment (CKA) between representations of the same examples, pure numpy.

Linear CKA (Kornblith et al. 2019) in its feature-space and example-space (Gram) forms, the
debiased variant built on the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021),
and ``delta_cka = 1 - CKA`` between representations before and after fine-tuning, optionally in one
shared PCA basis. Everything is computed in float64 whatever the input dtype. A constant
representation (zero variance in every feature) has no defined similarity: the CKA functions return
``nan`` for it (:func:`is_constant`). Used by the stages `cka`, `diagnose` and `probes`.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA

logger = logging.getLogger(__name__)

METHODS = ("linear", "debiased")


def _check_pair(X: np.ndarray, Y: np.ndarray, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate X (N, D1) and Y (N, D2) and return them as float64."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"expected 2-D arrays (N, D), got shapes {X.shape} and {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of examples, got {X.shape[0]} and {Y.shape[0]}")
    if X.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} examples, got {X.shape[0]}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("X and Y must be finite (found NaN or inf)")
    return X, Y


def is_constant(X: np.ndarray, rtol: float = 4e-3) -> bool:
    """True when no column of X (N, D) varies by more than `rtol` of that column's largest magnitude.

    A float16 vector saved from batches of different shapes (the embeddings' [CLS]) can differ by a
    unit in the last place (~1e-3 relative) between rows: that is rounding, not a representation.
    """
    X = np.asarray(X, dtype=np.float64)
    return bool(np.all(np.ptp(X, axis=0) <= rtol * np.abs(X).max(axis=0, initial=0.0)))


def _center_gram(K: np.ndarray) -> np.ndarray:
    """H K H for a symmetric Gram matrix K (N, N), with H = I - 11^T / N."""
    return K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()


def _hsic_unbiased(X: np.ndarray, Y: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012, eq. 5) of the linear Gram matrices K = X X^T, L = Y Y^T, N >= 4.

    Computed in feature space, O(N D^2), never forming the (N, N) Gram matrices: with K~, L~ the
    Gram matrices with zeroed diagonals, tr(K~ L~) = ||X^T Y||_F^2 - sum_i K_ii L_ii,
    1^T K~ 1 = ||X^T 1||^2 - tr K and K~ 1 = X (X^T 1) - diag K.
    """
    n = X.shape[0]
    dk, dl = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)  # diag K, diag L: (N,)
    sx, sy = X.sum(axis=0), Y.sum(axis=0)  # X^T 1 (D1,), Y^T 1 (D2,)
    trace = np.sum((X.T @ Y) ** 2) - dk @ dl
    ones = (sx @ sx - dk.sum()) * (sy @ sy - dl.sum()) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * ((X @ sx - dk) @ (Y @ sy - dl))
    return float((trace + ones - cross) / (n * (n - 3)))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA, feature-space form: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centered X (N, D1), Y (N, D2).

    Returns nan when X or Y is constant.
    """
    X, Y = _check_pair(X, Y)
    if is_constant(X) or is_constant(Y):
        logger.debug("constant representation: CKA undefined, returning nan")
        return float("nan")
    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    num = np.sum((Y.T @ X) ** 2)
    return float(num / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


def linear_cka_gram(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA, example-space form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T (N, N).

    HSIC(K, L) = tr(K H L H) (biased; the 1/(N-1)^2 factor cancels). Returns nan when X or Y is constant.
    """
    X, Y = _check_pair(X, Y)
    if is_constant(X) or is_constant(Y):
        return float("nan")
    K, L = _center_gram(X @ X.T), _center_gram(Y @ Y.T)
    return float(np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)))


def debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA with the unbiased HSIC estimator, X (N, D1), Y (N, D2), N >= 4.

    Matches Kornblith et al.'s ``cka(gram_x, gram_y, debiased=True)``; may be slightly negative
    for unrelated representations. Returns nan when X or Y is constant.
    """
    X, Y = _check_pair(X, Y, min_n=4)
    if is_constant(X) or is_constant(Y):
        return float("nan")
    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)  # HSIC_1 is shift-invariant; this only helps rounding
    kk, ll = _hsic_unbiased(X, X), _hsic_unbiased(Y, Y)
    if kk <= 0.0 or ll <= 0.0:
        return float("nan")
    return _hsic_unbiased(X, Y) / float(np.sqrt(kk * ll))


def standardize(X: np.ndarray) -> np.ndarray:
    """Z-score each column of X (N, D) in float64; zero-std columns are left at 0 after centering."""
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    std = X.std(axis=0)
    return np.divide(X, std, out=np.zeros_like(X), where=std > 0)


def shared_pca(X: np.ndarray, Y: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Project X (N, D) and Y (N, D) onto one PCA basis fitted on their vstack; returns (N, k) each.

    k = min(dim, 2N, D): PCA cannot have more components than samples (2N stacked rows) or
    features. With k >= rank of the centered stack no information is dropped and linear CKA is
    unchanged. svd_solver="covariance_eigh" (an eigendecomposition of the D x D covariance, fast
    for N >> D) makes the basis deterministic.
    """
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(f"expected 2-D arrays with the same feature dim, got {X.shape} and {Y.shape}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    k = min(dim, X.shape[0] + Y.shape[0], X.shape[1])
    pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(np.vstack([X, Y]))
    return pca.transform(X), pca.transform(Y)


def delta_cka(
    before: np.ndarray,
    after: np.ndarray,
    *,
    pca_dim: int | None,
    method: str = "linear",
    standardized: bool = False,
) -> float:
    """1 - CKA between before (N, D) and after (N, D) representations of the same examples.

    Optionally z-score each, then (if pca_dim) project both into a shared PCA basis, then
    CKA by `method` ("linear" or "debiased"). nan when either is constant.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CKA method {method!r}; expected one of {METHODS}")
    before, after = _check_pair(before, after, min_n=4 if method == "debiased" else 2)
    if standardized:
        before, after = standardize(before), standardize(after)
    if pca_dim is not None:
        before, after = shared_pca(before, after, pca_dim)
    cka = linear_cka if method == "linear" else debiased_cka
    return 1.0 - cka(before, after)
