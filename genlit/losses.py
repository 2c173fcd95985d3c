"""Pure loss functions: adversarial losses, the gradient penalty.

Every adversarial loss works on raw discriminator outputs (logits, or critic values for the
Wasserstein and hinge losses), never on probabilities: ``softplus`` keeps the log terms finite
where ``log(sigmoid(x))`` would underflow. Functions are named ``<variant>_<role>_loss`` so a
model dispatches on its ``loss`` argument with :func:`discriminator_loss` and
:func:`generator_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AdversarialLoss = Literal["minimax", "non_saturating", "least_squares", "hinge", "wasserstein"]


# Goodfellow et al. (2014), eq. 1: max_D E[log D(x)] + E[log(1 - D(G(z)))], D = sigmoid(logit).
# -log sigmoid(r) = softplus(-r) and -log(1 - sigmoid(f)) = softplus(f).
def minimax_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Binary cross-entropy of the discriminator: ``-E[log D(x)] - E[log(1 - D(G(z)))]``."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def minimax_generator_loss(fake: Tensor) -> Tensor:
    """The saturating generator loss ``E[log(1 - D(G(z)))]`` of Algorithm 1 (minimised by G)."""
    return -F.softplus(fake).mean()


# The non-saturating variant (Goodfellow et al., Sec. 3) keeps the same discriminator but lets
# the generator maximise log D(G(z)), which has strong gradients while D rejects every fake.
non_saturating_discriminator_loss = minimax_discriminator_loss


def non_saturating_generator_loss(fake: Tensor) -> Tensor:
    """The non-saturating generator loss ``-E[log D(G(z))]``."""
    return F.softplus(-fake).mean()


# Mao et al. (2017), LSGAN with the 0-1 coding a = 0, b = c = 1.
def least_squares_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """``1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2]``."""
    return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())


def least_squares_generator_loss(fake: Tensor) -> Tensor:
    """``1/2 E[(D(G(z)) - 1)^2]``."""
    return 0.5 * (fake - 1).pow(2).mean()


# Lim & Ye (2017), Miyato et al. (2018): the hinge version of the adversarial loss.
def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """``E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]``."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_generator_loss(fake: Tensor) -> Tensor:
    """``-E[D(G(z))]``."""
    return -fake.mean()


# Arjovsky et al. (2017): the critic maximises E[f(x)] - E[f(G(z))], an estimate of W1 when f
# is 1-Lipschitz (kept so by clipping or by the gradient penalty).
def wasserstein_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """``E[f(G(z))] - E[f(x)]``: minus the critic's estimate of the Wasserstein-1 distance."""
    return fake.mean() - real.mean()


def wasserstein_generator_loss(fake: Tensor) -> Tensor:
    """``-E[f(G(z))]``."""
    return -fake.mean()


_DISCRIMINATOR_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "minimax": minimax_discriminator_loss,
    "non_saturating": non_saturating_discriminator_loss,
    "least_squares": least_squares_discriminator_loss,
    "hinge": hinge_discriminator_loss,
    "wasserstein": wasserstein_discriminator_loss,
}
_GENERATOR_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "minimax": minimax_generator_loss,
    "non_saturating": non_saturating_generator_loss,
    "least_squares": least_squares_generator_loss,
    "hinge": hinge_generator_loss,
    "wasserstein": wasserstein_generator_loss,
}


def discriminator_loss(variant: AdversarialLoss) -> Callable[[Tensor, Tensor], Tensor]:
    """The discriminator loss function of ``variant``, called as ``fn(real_out, fake_out)``."""
    if variant not in _DISCRIMINATOR_LOSSES:
        raise ValueError(f"unknown loss {variant!r}: choose one of {sorted(_DISCRIMINATOR_LOSSES)}")
    return _DISCRIMINATOR_LOSSES[variant]


def generator_loss(variant: AdversarialLoss) -> Callable[[Tensor], Tensor]:
    """The generator loss function of ``variant``, called as ``fn(fake_out)``."""
    if variant not in _GENERATOR_LOSSES:
        raise ValueError(f"unknown loss {variant!r}: choose one of {sorted(_GENERATOR_LOSSES)}")
    return _GENERATOR_LOSSES[variant]


# Gulrajani et al. (2017), eq. 3: lambda * E[(||grad_x f(x_hat)||_2 - 1)^2] with
# x_hat = eps * x + (1 - eps) * G(z), eps ~ U[0, 1] drawn once per sample.
def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    weight: float = 10.0,
    eps: Tensor | None = None,
) -> Tensor:
    """Two-sided gradient penalty of WGAN-GP, with the norm taken per sample.

    The penalty is computed in float32 with autocast disabled: the double backward through a
    half-precision critic loses the small gradient norms and overflows the large ones (the NaNs
    reported for mixed-precision WGAN-GP), and ``autograd.grad`` here is not seen by the loss
    scaler, so no unscaling is needed. The result is added to the critic loss and scaled with it.

    Args:
        critic: The critic ``f``, mapping a batch of samples to one score per sample.
        real: Real samples, shape ``(B, ...)``.
        fake: Generated samples, same shape (detached from the generator).
        weight: The penalty coefficient lambda.
        eps: Optional interpolation coefficients of shape ``(B,)``; drawn from U[0, 1] if None.

    Returns:
        The scalar ``weight * mean_i (||grad f(x_hat_i)|| - 1)^2``.
    """
    batch = real.shape[0]
    if eps is None:
        eps = torch.rand(batch, device=real.device)
    eps = eps.float().view(batch, *([1] * (real.dim() - 1)))  # (B, 1, ..., 1)
    with torch.autocast(device_type=real.device.type, enabled=False):
        mixed = (eps * real.float() + (1 - eps) * fake.detach().float()).requires_grad_(True)
        scores = critic(mixed)
        (grads,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        norms = grads.flatten(1).norm(2, dim=1)  # (B,)
        return weight * (norms - 1).pow(2).mean()
