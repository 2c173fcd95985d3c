"""ELBO surgery (Hoffman & Johnson, 2016): where the VAE's KL term goes.

Averaged over the data, the KL term of the ELBO splits into two parts,

    E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)),

the mutual information between an image and its code under the encoder, and the marginal KL of
the aggregate posterior ``q(z) = E_x q(z|x)`` from the prior. A VAE that uses its latents needs
the first term large; sampling from the prior only works when the second is small. The lecture's
table (after Hoffman & Johnson) shows the second growing with the latent size.

The estimator, on a held-out set of N points with diagonal Gaussian encoder outputs:

* ``q(z)`` is the mixture ``(1/N) sum_n q(z|x_n)``, evaluated exactly by a log-sum-exp over all
  N Gaussians (nothing left out, the point's own component included);
* ``KL(q(z) || p(z)) = E_q(z)[log q(z) - log p(z)]`` by Monte Carlo: ``num_samples`` draws
  ``z ~ q(z|x_n)`` per point;
* the average KL is analytic, and ``I(x; z) = average KL - marginal KL``.

Bias: the mixture is the aggregate posterior of the N held-out points, not of the data
distribution. Because each ``z`` is scored by a mixture that contains the component it was drawn
from, ``I(x; z)`` is underestimated and bounded by ``log N`` (a perfectly separating encoder
reaches it), and the marginal KL is overestimated by the same amount; both biases shrink as N
grows. Hoffman & Johnson used the 60,000 training images (``log N = 11.0``); with 10,000 held-out
images the bound is ``log N = 9.2``. The Monte-Carlo part is unbiased given the mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genlit.losses import gaussian_kl

__all__ = ["ElboSurgery", "elbo_surgery", "log_aggregate_posterior"]


@dataclass(frozen=True)
class ElboSurgery:
    """The KL term of the ELBO split in two, in nats per data point.

    Attributes:
        avg_kl: ``E_x KL(q(z|x) || p(z))``, analytic.
        mutual_info: ``I(x; z) = avg_kl - marginal_kl``.
        marginal_kl: ``KL(q(z) || p(z))``, Monte Carlo.
        marginal_kl_se: Standard error of the Monte-Carlo marginal KL.
        num_points: N, the points whose encoder Gaussians form the aggregate posterior.
    """

    avg_kl: float
    mutual_info: float
    marginal_kl: float
    marginal_kl_se: float
    num_points: int

    @property
    def mutual_info_bound(self) -> float:
        """``log N``: the estimator of ``I(x; z)`` cannot exceed it."""
        return math.log(self.num_points)


def _log_normal(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log N(z_i; mean_n, diag(exp(log_var_n)))`` for every pair; (S, D), (N, D) -> (S, N).

    The square is expanded into two matrix products so the (S, N, D) tensor is never built;
    callers pass float64, where the expansion loses nothing even for tiny variances.
    """
    precision = torch.exp(-log_var)  # (N, D)
    quad = z.pow(2) @ precision.T - 2 * z @ (mean * precision).T  # (S, N)
    const = (mean.pow(2) * precision + log_var).sum(1) + mean.shape[1] * math.log(
        2 * math.pi
    )  # (N,)
    return -0.5 * (quad + const)


def log_aggregate_posterior(
    z: Tensor, mean: Tensor, log_var: Tensor, chunk_size: int = 1024
) -> Tensor:
    """``log q(z)`` of the mixture ``(1/N) sum_n N(mean_n, diag(exp(log_var_n)))`` at each row of ``z``.

    Args:
        z: Points, shape (S, D).
        mean: Means of the N mixture components, shape (N, D).
        log_var: Log-variances of the components, shape (N, D).
        chunk_size: Rows of ``z`` scored at once; memory is ``chunk_size * N`` floats.

    Returns:
        Log-densities in float64, shape (S,).
    """
    mean, log_var = mean.double(), log_var.double()
    log_n = math.log(mean.shape[0])
    out = [
        torch.logsumexp(_log_normal(chunk.double(), mean, log_var), dim=1) - log_n
        for chunk in z.split(chunk_size)
    ]
    return torch.cat(out)  # (S,)


@torch.no_grad()
def elbo_surgery(
    mean: Tensor,
    log_var: Tensor,
    num_samples: int = 1,
    chunk_size: int = 1024,
    generator: torch.Generator | None = None,
) -> ElboSurgery:
    """Splits the average KL into mutual information and marginal KL (Hoffman & Johnson, 2016).

    Args:
        mean: Encoder means of N held-out points, shape (N, D).
        log_var: Encoder log-variances, shape (N, D).
        num_samples: Draws ``z ~ q(z|x_n)`` per point for the Monte-Carlo marginal KL.
        chunk_size: Draws scored against all N components at once (memory ``chunk_size * N``).
        generator: Random generator for the draws, for reproducible estimates.

    Returns:
        The decomposition; see the module docstring for the estimator and its bias.
    """
    if mean.ndim != 2 or mean.shape != log_var.shape:
        raise ValueError(
            f"mean and log_var must both be (N, D), got {tuple(mean.shape)} and {tuple(log_var.shape)}"
        )
    if mean.shape[0] < 2:
        raise ValueError(f"the aggregate posterior needs at least 2 points, got {mean.shape[0]}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    mean, log_var = mean.double(), log_var.double()
    noise = torch.randn(
        num_samples, *mean.shape, generator=generator, dtype=mean.dtype, device=mean.device
    )
    z = (mean + (0.5 * log_var).exp() * noise).flatten(0, 1)  # (S * N, D)
    log_q = log_aggregate_posterior(z, mean, log_var, chunk_size)  # (S * N,)
    log_p = -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))  # (S * N,)
    gap = log_q - log_p
    avg_kl = gaussian_kl(mean, log_var).mean().item()
    marginal_kl = gap.mean().item()
    return ElboSurgery(
        avg_kl=avg_kl,
        mutual_info=avg_kl - marginal_kl,
        marginal_kl=marginal_kl,
        marginal_kl_se=(gap.std() / math.sqrt(gap.numel())).item(),
        num_points=mean.shape[0],
    )
