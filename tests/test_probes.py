"""Probes on synthetic data whose answer is known: separable, random, XOR; controls, splits, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inflection_layers.probes import (
    ProbeConfig,
    make_probe,
    majority_baseline,
    probe_layers,
    split_indices,
    train_probe,
)

N, D = 400, 16
LINEAR, MLP = ProbeConfig("linear"), ProbeConfig("mlp")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on 2 busy cores are far faster single-threaded; restore the setting after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def separable(seed: int = 0, n: int = N, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs 6 sigma apart along a random direction: (n, d) float32, (n,) labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    w = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + np.outer(2 * y - 1, 3 * w / np.linalg.norm(w))
    return X.astype(np.float32), y


def xor(seed: int = 0, n: int = N, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Label = sign(x0) xor sign(x1), plus noise dimensions: no linear probe can beat chance."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)


def fit(X, y, cfg, seed=0, n_train=300):
    return train_probe(X[:n_train], y[:n_train], X[n_train:], y[n_train:], cfg, seed)


@pytest.mark.parametrize("cfg", [LINEAR, MLP, ProbeConfig("linear", standardize=False)])
def test_separable_data_is_probed_well(cfg):
    res = fit(*separable(), cfg)
    assert set(res) == {"accuracy", "train_accuracy", "loss"}
    assert res["accuracy"] >= 0.95 and res["train_accuracy"] >= 0.95
    assert 0 <= res["loss"] < 0.3


@pytest.mark.parametrize("cfg", [LINEAR, MLP])
def test_random_labels_give_chance_on_eval(cfg):
    X, _ = separable()
    y = np.random.default_rng(1).integers(0, 2, N)
    res = fit(X, y, cfg, n_train=200)  # 200 eval examples
    assert 0.3 <= res["accuracy"] <= 0.7


def test_mlp_beats_linear_on_xor():
    X, y = xor()
    lin, mlp = fit(X, y, LINEAR), fit(X, y, ProbeConfig("mlp", epochs=40))
    assert lin["accuracy"] <= 0.7
    assert mlp["accuracy"] >= 0.85
    assert mlp["accuracy"] - lin["accuracy"] >= 0.2


@pytest.mark.parametrize("cfg", [LINEAR, MLP])
def test_same_seed_same_result_and_no_global_rng_side_effect(cfg):
    X, y = xor()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = fit(X, y, cfg, seed=7, n_train=200)
    after = torch.rand(1)
    assert a == fit(X, y, cfg, seed=7, n_train=200)
    assert torch.equal(before, after)  # training did not consume the global RNG
    b = fit(X, y, cfg, seed=8, n_train=200)
    assert set(b) == set(a)  # a different seed may or may not differ; it must still run


def test_float16_input_and_constant_feature():
    X, y = separable()
    X[:, 3] = 5.0  # constant column: std 0 must not give nan
    X[:, 5] *= 1000.0  # a huge outlier dimension, as in BERT [CLS]
    res = fit(X.astype(np.float16), y, LINEAR)
    assert all(np.isfinite(v) for v in res.values())
    assert res["accuracy"] >= 0.9


@pytest.mark.parametrize("kind, n_params", [("linear", 16 * 3 + 3), ("mlp", 16 * 768 + 768 + 768 * 3 + 3)])
def test_make_probe_shapes(kind, n_params):
    probe = make_probe(16, 3, ProbeConfig(kind))
    assert probe(torch.zeros(5, 16)).shape == (5, 3)
    assert sum(p.numel() for p in probe.parameters()) == n_params


@pytest.mark.parametrize(
    "y_train, y_eval, expected",
    [
        ([0, 1, 1, 1], [1, 1, 0, 0], 0.5),
        ([2, 2, 0], [2, 2, 2, 1], 0.75),
        ([0, 1], [1, 1, 0], 1 / 3),  # tie: smallest label
        ([1, 1], [0, 0], 0.0),
    ],
)
def test_majority_baseline(y_train, y_eval, expected):
    assert majority_baseline(np.array(y_train), np.array(y_eval)) == pytest.approx(expected)


def test_probe_layers_rows_and_shuffled_control():
    X, y = separable(n=240, d=8)
    noise = np.random.default_rng(2).normal(size=X.shape).astype(np.float32)
    reps = np.stack([noise, X, X])  # (L=3, N, D): layer 0 carries no signal
    tr, ev = split_indices(240, 160, 80, seed=0, stratify=y)
    cfgs = [ProbeConfig("linear", epochs=10), ProbeConfig("mlp", epochs=10)]
    rows = probe_layers(reps, y, tr, ev, cfgs, seed=0)
    assert len(rows) == 3 * (2 * 2 + 1)
    assert all(set(r) == {"layer", "probe", "accuracy", "train_accuracy"} for r in rows)
    acc = {(r["layer"], r["probe"]): r["accuracy"] for r in rows}
    assert {p for _, p in acc} == {"linear", "mlp", "linear_shuffled", "mlp_shuffled", "majority"}
    for kind in ("linear", "mlp"):
        assert acc[(1, kind)] >= 0.95
        assert acc[(1, kind)] - acc[(1, f"{kind}_shuffled")] >= 0.25
        assert acc[(0, kind)] <= 0.7
    assert acc[(2, "majority")] == pytest.approx(majority_baseline(y[tr], y[ev]))
    assert len(probe_layers(reps[:1], y, tr, ev, cfgs[:1], seed=0, control=False)) == 2
    with pytest.raises(ValueError, match="unique"):
        probe_layers(reps, y, tr, ev, [LINEAR, LINEAR], seed=0)


@pytest.mark.parametrize("stratify", [False, True])
def test_split_indices(stratify):
    y = np.array([0] * 300 + [1] * 100)
    tr, ev = split_indices(400, 200, 100, seed=3, stratify=y if stratify else None)
    assert len(tr) == 200 and len(ev) == 100 and not set(tr) & set(ev)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(ev) > 0)
    if stratify:
        assert y[tr].mean() == pytest.approx(0.25) and y[ev].mean() == pytest.approx(0.25)
    again = split_indices(400, 200, 100, seed=3, stratify=y if stratify else None)
    assert np.array_equal(tr, again[0]) and np.array_equal(ev, again[1])


def test_split_indices_too_large():
    with pytest.raises(ValueError, match=r"train_size=300.*eval_size=200.*n=400"):
        split_indices(400, 300, 200, seed=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kind": "svm"}, "kind"),
        ({"kind": "linear", "epochs": 0}, "epochs"),
        ({"kind": "mlp", "dropout": 1.0}, "dropout"),
        ({"kind": "mlp", "lr": 0.0}, "lr"),
        ({"kind": "mlp", "lr": -1e-3}, "lr"),
        ({"kind": "mlp", "batch_size": 0}, "batch_size"),
    ],
)
def test_probe_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=rf"ProbeConfig\.{field}="):
        ProbeConfig(**kwargs)
