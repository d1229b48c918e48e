"""A TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), in a few lines of torch.

x (N, D) is centred and scaled once by statistics of the training activations (:class:`Scale`), so that the
reconstruction loss is comparable across layers. Encoder: z = TopK(ReLU((x - b_dec) W_enc + b_enc)), k latents
active per token; decoder: x_hat = z W_dec + b_dec with unit-norm dictionary rows (renormalised after every
step, their gradient's parallel component removed first). Scores on held-out tokens: the fraction of variance
unexplained, FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, the mean number of active latents (L0, k by
construction) and the dead latents (never active on those tokens).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class Scale:
    """Centre and scale of a layer's training activations: x -> (x - mean) / rms, rms the root-mean-square norm."""

    mean: Tensor  # (D,)
    rms: float

    @classmethod
    def fit(cls, x: Tensor) -> Scale:
        mean = x.double().mean(0)
        rms = float((x.double() - mean).pow(2).sum(1).mean().sqrt())
        return cls(mean.float(), rms if rms > 0 else 1.0)

    def __call__(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.rms


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder with `latents` dictionary directions of width `width` and `k` active per input."""

    def __init__(self, width: int, latents: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        if not 1 <= k <= latents:
            raise ValueError(f"k must be in [1, {latents}], got {k}")
        self.k = k
        w = torch.randn(latents, width, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())  # (M, D), unit rows
        self.W_enc = nn.Parameter(w.t().clone())  # (D, M): tied at initialisation
        self.b_enc = nn.Parameter(torch.zeros(latents))
        self.b_dec = nn.Parameter(torch.zeros(width))

    def latents(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) -> the k active latents per row: values (N, k), non-negative, and their indices (N, k) in [0, M)."""
        # (x - b_dec) W_enc + b_enc, with b_dec folded into the bias: its gradient is then a (1, M) x (M, D) product,
        # not the (N, M) x (M, D) one that autograd would compute for the gradient of (x - b_dec)
        top = torch.topk(torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x, self.W_enc), self.k, dim=-1)
        return F.relu(top.values), top.indices  # ReLU after TopK: the same k latents, no (N, M) ReLU

    def dense(self, values: Tensor, indices: Tensor) -> Tensor:
        """Active latents (N, k) -> the dense code (N, M), zero outside them."""
        return torch.zeros(len(values), self.W_dec.shape[0], dtype=values.dtype).scatter_(-1, indices, values)

    def encode(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, M) with k non-negative entries per row (dense; training and scoring use `latents`)."""
        return self.dense(*self.latents(x))

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """Active latents (N, k) -> reconstruction (N, D): a weighted sum of k dictionary rows, no (N, M) product."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (N, D) of x (N, D)."""
        return self.decode(*self.latents(x))

    @torch.no_grad()
    def normalise(self) -> None:
        """Unit-norm dictionary rows, and no gradient along them (which would only change their norm)."""
        if self.W_dec.grad is not None:
            w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)


def train_sae(
    x: Tensor, latents: int, k: int, epochs: int, batch_size: int, lr: float, seed: int, kind: type = TopKSAE
) -> TopKSAE:
    """Fit a TopK SAE (of class `kind`) to scaled activations x (N, D) with Adam on the mean squared error;
    deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    sae = kind(x.shape[1], latents, k, g)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            batch = x[idx]
            loss = (sae(batch) - batch).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.normalise()
            opt.step()
            sae.normalise()
    return sae


@torch.no_grad()
def evaluate_sae(sae: TopKSAE, x: Tensor, batch_size: int = 8192) -> dict[str, float]:
    """FVU, L0 and the share of dead latents of `sae` on scaled activations x (N, D)."""
    err, total, l0, fired = 0.0, 0.0, 0.0, torch.zeros(sae.W_dec.shape[0], dtype=torch.bool)
    mean = x.double().mean(0).float()
    for part in x.split(batch_size):
        values, indices = sae.latents(part)
        x_hat = sae.decode(values, indices)
        err += float((part - x_hat).pow(2).sum(1).double().sum())
        total += float((part - mean).pow(2).sum(1).double().sum())
        active = values > 0
        l0 += float(active.sum())
        fired[indices[active]] = True
    return {
        "fvu": err / total if total > 0 else float("nan"),
        "l0": l0 / len(x),
        "dead": float(1 - fired.double().mean()),
    }


def token_cosine(before: np.ndarray, after: np.ndarray) -> float:
    """Mean over tokens of the cosine similarity of the same token's hidden state before and after (N, D) each."""
    b, a = torch.as_tensor(before, dtype=torch.float64), torch.as_tensor(after, dtype=torch.float64)
    return float(F.cosine_similarity(b, a, dim=1).mean())
