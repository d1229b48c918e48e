"""The TopK sparse autoencoder of the `features` stage, and the stage's pure helpers, on known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inflection_layers.features import training_sentences
from inflection_layers.sae import Scale, TopKSAE, evaluate_sae, token_cosine, train_sae


def sparse_data(n: int, width: int, atoms: int, k: int, seed: int) -> torch.Tensor:
    """n vectors (n, width), each a non-negative combination of k of `atoms` random unit directions."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, width, generator=g), dim=1)
    codes = torch.zeros(n, atoms)
    codes.scatter_(1, torch.rand(n, atoms, generator=g).argsort(1)[:, :k], torch.rand(n, k, generator=g) + 0.5)
    return codes @ dictionary


def test_encode_keeps_k_non_negative_latents_and_decode_is_the_dense_product() -> None:
    sae = TopKSAE(width=8, latents=32, k=4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    z = sae.encode(x)  # (50, 32)
    assert z.shape == (50, 32) and (z >= 0).all() and ((z > 0).sum(1) <= 4).all()
    values, indices = sae.latents(x)
    assert torch.allclose(sae.decode(values, indices), z @ sae.W_dec + sae.b_dec, atol=1e-5)
    assert torch.allclose(sae(x), z @ sae.W_dec + sae.b_dec, atol=1e-5)


def test_k_outside_the_dictionary_is_refused() -> None:
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(width=8, latents=16, k=17, generator=torch.Generator().manual_seed(0))


def test_training_recovers_a_sparse_dictionary_and_is_deterministic() -> None:
    x = sparse_data(4000, width=16, atoms=32, k=2, seed=0)
    scale = Scale.fit(x)
    scaled = scale(x)
    assert torch.allclose(scaled.mean(0), torch.zeros(16), atol=1e-5)
    assert scaled.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-4)
    untrained = evaluate_sae(TopKSAE(16, 64, 4, torch.Generator().manual_seed(3)), scaled)
    sae = train_sae(scaled, latents=64, k=4, epochs=20, batch_size=256, lr=3e-3, seed=3)
    held = scale(sparse_data(1000, width=16, atoms=32, k=2, seed=0)[:500])
    scores = evaluate_sae(sae, held)
    assert scores["fvu"] < 0.2 < untrained["fvu"]
    assert 0 < scores["l0"] <= 4 and 0 <= scores["dead"] < 1
    again = train_sae(scaled, latents=64, k=4, epochs=20, batch_size=256, lr=3e-3, seed=3)
    assert torch.equal(again.W_dec, sae.W_dec)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)  # unit dictionary rows


def test_a_perfect_reconstruction_has_no_unexplained_variance() -> None:
    """x built from the SAE's own dictionary, one positive latent per row, is reconstructed exactly."""
    sae = TopKSAE(width=6, latents=6, k=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(6))
        sae.W_enc.copy_(torch.eye(6))
    x = torch.eye(6)[[0, 1, 2, 0, 1, 2]] * torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    scores = evaluate_sae(sae, x, batch_size=4)  # two batches
    assert scores["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert scores["l0"] == 1.0 and scores["dead"] == pytest.approx(0.5)  # latents 3, 4, 5 never fire


def test_token_cosine() -> None:
    a = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float16)
    assert token_cosine(a, a) == pytest.approx(1.0)
    assert token_cosine(a, -a) == pytest.approx(-1.0)
    assert token_cosine(a, 3 * a) == pytest.approx(1.0)


def test_training_sentences_are_whole_seeded_and_enough() -> None:
    lengths = [5, 7, 3, 9, 4, 6]
    chosen = training_sentences(lengths, train_tokens=15, seed=0)
    assert sum(lengths[i] for i in chosen) >= 15 and list(chosen) == sorted(chosen)
    assert np.array_equal(chosen, training_sentences(lengths, train_tokens=15, seed=0))
    assert len(training_sentences(lengths, train_tokens=10_000, seed=0)) == len(lengths)  # all if fewer


def test_the_benchmarks_dense_decoder_computes_the_same_function() -> None:
    """Benchmark (k) compares two computations of one function: a dense code times the dictionary, b_dec subtracted
    from x, against k rows summed with b_dec folded into the bias."""
    from inflection_layers.tools.sae_speed import DenseDecoderSAE

    fast, dense = (kind(12, 48, 5, torch.Generator().manual_seed(0)) for kind in (TopKSAE, DenseDecoderSAE))
    with torch.no_grad():
        for sae in (fast, dense):
            sae.b_dec.copy_(torch.linspace(-1, 1, 12))
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fast(x), dense(x), atol=1e-5)
    trained = [train_sae(x, 48, 5, 3, 8, 1e-2, seed=2, kind=kind) for kind in (TopKSAE, DenseDecoderSAE)]
    assert torch.allclose(trained[0].W_dec, trained[1].W_dec, atol=1e-4)
