"""Benchmark part (k): the `features` stage's sparse autoencoder against the first implementation's arithmetic
(tools/benchmark.py runs it), side by side on the same activations and seed."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from inflection_layers.sae import TopKSAE, evaluate_sae, train_sae


class DenseDecoderSAE(TopKSAE):
    """The first implementation: b_dec subtracted from x before the encoder, a dense (N, M) code times the
    dictionary. The same function as TopKSAE, computed with two more (N, M) x (M, D) products per training step."""

    def latents(self, x: Tensor) -> tuple[Tensor, Tensor]:
        top = torch.topk((x - self.b_dec) @ self.W_enc + self.b_enc, self.k, dim=-1)
        return torch.relu(top.values), top.indices

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        return self.dense(values, indices) @ self.W_dec + self.b_dec


def sae_speed(
    width: int, features, tokens: int = 20_000, epochs: int = 2, held_out: int = 27_000, repeats: int = 3
) -> None:
    """(k) best-of-`repeats` seconds to train (`epochs` over `tokens`) and to score each SAE on Gaussian activations
    of the model's width, with `features`' expansion, k, batch size, lr and seed; the ratios and both FVUs."""
    g = torch.Generator().manual_seed(features.seed)
    x, held = torch.randn(tokens, width, generator=g), torch.randn(held_out, width, generator=g)
    times: dict[type, list[tuple[float, float]]] = {DenseDecoderSAE: [], TopKSAE: []}  # (training, scoring) s
    fvu: dict[type, float] = {}
    for _ in range(repeats):
        for kind, runs in times.items():
            t0 = time.perf_counter()
            sae = train_sae(
                x,
                features.expansion * width,
                features.k,
                epochs,
                features.batch_size,
                features.lr,
                features.seed,
                kind,
            )
            t1 = time.perf_counter()
            fvu[kind] = evaluate_sae(sae, held)["fvu"]
            runs.append((t1 - t0, time.perf_counter() - t1))
    (dt, nt), (ds, ns) = ([min(t[i] for t in times[kind]) for kind in times] for i in (0, 1))
    dfvu, nfvu = fvu[DenseDecoderSAE], fvu[TopKSAE]
    print(
        f"\n(k) the features stage's SAE ({tokens} tokens x {width}, {features.expansion * width} latents, "
        f"k {features.k}, {epochs} epochs; scoring {held_out} tokens), against a dense decoder:\n"
        f"    training {dt:.2f} -> {nt:.2f} s ({dt / nt:.2f}x), scoring {ds:.3f} -> {ns:.3f} s ({ds / ns:.2f}x); "
        f"FVU {dfvu:.5f} and {nfvu:.5f}"
    )
