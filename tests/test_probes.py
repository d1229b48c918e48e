"""Probes: the batched trainer (one independent probe per layer) learns what it should and nothing else;
per-cell, per-layer shuffled controls; majority baseline; stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import params_with
from inflection_layers.cells import Cell, Group
from inflection_layers.probes import cell_seed, majority_baseline, probe_cell, split_indices, train_probes

P = params_with(probe={"epochs": 30, "hidden": 32, "batch_size": 32, "lr": 1e-2, "controls": 2}).probe


def blobs(n: int, d: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return rng.normal(size=(n, d)) + shift * y[:, None], y


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_separable_layers_are_probed_well_and_noise_layers_at_chance(kind: str) -> None:
    X, y = blobs(300, 8, 3.0, 0)
    noise = np.random.default_rng(1).normal(size=X.shape)
    stack = np.stack([X, noise])  # (2 layers, N, D)
    out = train_probes(stack[:, :200], np.tile(y[:200], (2, 1)), stack[:, 200:], y[200:], kind, P, seed=0)
    assert out["accuracy"][0] > 0.9 and abs(out["accuracy"][1] - 0.5) < 0.2


def test_stacked_probes_equal_separate_ones() -> None:
    """AdamW is elementwise: training two layers together gives what each would alone (same seed, linear, no
    dropout)."""
    X, y = blobs(120, 4, 1.0, 2)
    Z, _ = blobs(120, 4, 0.5, 3)
    both = train_probes(
        np.stack([X, Z])[:, :80], np.tile(y[:80], (2, 1)), np.stack([X, Z])[:, 80:], y[80:], "linear", P, seed=5
    )
    alone = train_probes(X[None, :80], y[None, :80], X[None, 80:], y[80:], "linear", P, seed=5)
    assert both["accuracy"][0] == pytest.approx(alone["accuracy"][0], abs=0.05)


def test_mlp_beats_linear_on_xor() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(600, 2))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    p = params_with(probe={"epochs": 80, "hidden": 32, "batch_size": 32, "lr": 1e-2, "dropout": 0.0}).probe
    lin = train_probes(X[None, :400], y[None, :400], X[None, 400:], y[400:], "linear", p, seed=0)
    mlp = train_probes(X[None, :400], y[None, :400], X[None, 400:], y[400:], "mlp", p, seed=0)
    assert mlp["accuracy"][0] > 0.85 > lin["accuracy"][0] + 0.15


def test_same_seed_same_result_and_no_global_rng_side_effect() -> None:
    X, y = blobs(100, 4, 1.0, 4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = train_probes(X[None, :70], y[None, :70], X[None, 70:], y[70:], "mlp", P, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    b = train_probes(X[None, :70], y[None, :70], X[None, 70:], y[70:], "mlp", P, seed=7)
    np.testing.assert_array_equal(a["accuracy"], b["accuracy"])


@pytest.mark.parametrize(
    ("y_train", "y_eval", "expected"),
    [([0, 0, 1], [0, 1, 1, 1], 0.25), ([1, 1, 0], [1, 0], 0.5), ([0, 1], [0, 0, 1], 2 / 3)],
)
def test_majority_baseline(y_train: list[int], y_eval: list[int], expected: float) -> None:
    assert majority_baseline(np.array(y_train), np.array(y_eval)) == pytest.approx(expected)


def test_probe_cell_rows_controls_and_constant_layers() -> None:
    X, y = blobs(150, 6, 2.0, 6)
    reps = np.stack([np.tile(X[:1], (150, 1)), X, X * 2]).astype(np.float16)  # layer -1 constant: skipped
    tr, ev = split_indices(y, 0.67, 0)
    rows = probe_cell(reps, y, tr, ev, P, shuffle_seed=11)
    assert {r["layer"] for r in rows} == {0, 1}
    assert {r["metric"] for r in rows} == {"linear", "mlp", "linear_shuffled", "mlp_shuffled", "majority"}
    by = {(r["layer"], r["metric"]): r["value"] for r in rows}
    assert by[(0, "linear")] > 0.85 and by[(0, "linear_shuffled")] < 0.75
    assert rows == probe_cell(reps, y, tr, ev, P, shuffle_seed=11)  # fixed seeds: reproducible


def test_each_cell_gets_its_own_shuffled_labellings() -> None:
    a = Cell(Group("rt", "over", 42), "full")
    b = Cell(Group("rt", "under", 42), "full")
    assert cell_seed(a, 0) != cell_seed(b, 0) and cell_seed(a, 0) == cell_seed(a, 0)


def test_split_indices_are_disjoint_and_stratified() -> None:
    y = np.array([0] * 60 + [1] * 40)
    tr, ev = split_indices(y, 0.7, 0)
    assert len(tr) == 70 and len(ev) == 30 and not set(tr) & set(ev)
    assert y[tr].mean() == pytest.approx(0.4, abs=0.02)
