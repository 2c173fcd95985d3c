"""Pure loss functions: adversarial losses, the gradient penalty.

Every adversarial loss works on raw discriminator outputs (logits, or critic values for the
Wasserstein and hinge losses), never on probabilities: ``softplus`` keeps the log terms finite
where ``log(sigmoid(x))`` would underflow. Functions are named ``<variant>_<role>_loss`` so a
model dispatches on its ``loss`` argument with :func:`discriminator_loss` and
:func:`generator_loss`.
The autoencoder terms (reconstruction losses, the Gaussian KL, kernels and the MMD) close the file.
"""

from __future__ import annotations

import math
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


# --- autoencoders ------------------------------------------------------------------------------
# Reconstruction terms and the KL are per sample, shape (B,), summed over pixels or latent
# dimensions (nats per image, the unit of the VAE literature); the models average over the batch.
# Images are in [-1, 1].


def squared_error_reconstruction_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """``||x - x_hat||^2`` per sample, the WAE cost c(x, y); shape (B,)."""
    return (x - x_hat).pow(2).flatten(1).sum(1)


def bernoulli_reconstruction_loss(logits: Tensor, x: Tensor) -> Tensor:
    """``-log p(x|z)`` of a Bernoulli decoder per sample, targets ``(x + 1) / 2`` in [0, 1]; (B,).

    Grey-level targets are allowed (the usual MNIST practice): then the value is a cross-entropy
    that includes the targets' own entropy, so it stays above 0 even for a perfect decoder.
    """
    target = (x + 1) / 2
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def gaussian_reconstruction_loss(mean: Tensor, x: Tensor, std: float) -> Tensor:
    """``-log N(x; mean, std^2 I)`` per sample (a density, in nats); shape (B,)."""
    squares = ((x - mean) / std).pow(2).flatten(1)  # (B, D)
    return 0.5 * squares.sum(1) + squares.shape[1] * (math.log(std) + 0.5 * math.log(2 * math.pi))


# Kingma & Welling (2014), Appendix B: -KL(q || p) = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)
# for q = N(mu, diag(sigma^2)) and p = N(0, I).
def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """Analytic ``KL(N(mean, exp(log_var)) || N(0, I))`` per sample; shape (B,)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1).sum(1)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``||x_i - y_j||^2`` for every pair of rows; (N, D), (M, D) -> (N, M)."""
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def _imq(distances: Tensor, scale: float) -> Tensor:
    return scale / (scale + distances)


def _rbf(distances: Tensor, scale: float) -> Tensor:
    return torch.exp(-distances / (2 * scale))


def imq_kernel(x: Tensor, y: Tensor, scale: float) -> Tensor:
    """Inverse multiquadratic kernel ``C / (C + ||x - y||^2)`` with ``C = scale``; (N, M)."""
    return _imq(squared_distances(x, y), scale)


def rbf_kernel(x: Tensor, y: Tensor, scale: float) -> Tensor:
    """Gaussian (RBF) kernel ``exp(-||x - y||^2 / (2 scale))``, ``scale`` the variance; (N, M)."""
    return _rbf(squared_distances(x, y), scale)


MMDKernel = Literal["imq", "rbf"]
# Kernels as functions of the squared distances, so a sum over scales computes them once.
_KERNELS: dict[str, Callable[[Tensor, float], Tensor]] = {"imq": _imq, "rbf": _rbf}
# The official WAE code sums the IMQ kernel over these multiples of C = 2 d sigma_z^2, the
# expected squared distance of two prior draws, so no single bandwidth has to be right.
WAE_KERNEL_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


# Gretton et al. (2012), Lemma 6: the unbiased MMD^2 leaves out the i = j terms of the two
# within-sample sums; Tolstikhin et al. (2018), Algorithm 2, use it as the WAE-MMD penalty.
def mmd_penalty(
    x: Tensor,
    y: Tensor,
    kernel: MMDKernel = "imq",
    scales: tuple[float, ...] = WAE_KERNEL_SCALES,
    prior_var: float = 1.0,
) -> Tensor:
    """Unbiased estimate of ``MMD^2`` between the samples ``x`` (N, D) and ``y`` (M, D).

    The kernel is a sum over ``scales``: for ``imq`` each term has ``C = 2 D prior_var * scale``
    (the WAE paper's setting), for ``rbf`` the variance ``D prior_var * scale`` (half the
    expected squared distance of two prior draws: the same bandwidths in RBF form). The
    estimate is 0 in expectation when both samples come from one distribution, and may dip
    below 0.

    Args:
        x: Samples of the first distribution, e.g. encoded codes; N >= 2.
        y: Samples of the second distribution, e.g. prior draws; M >= 2.
        kernel: ``imq`` (inverse multiquadratic) or ``rbf``.
        scales: Multipliers of the base bandwidth; the kernels are summed over them.
        prior_var: Variance sigma_z^2 of each prior coordinate, which sets the base bandwidth.

    Returns:
        The scalar ``MMD^2_u``.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose one of {sorted(_KERNELS)}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {n} and {m}")
    base = (2.0 if kernel == "imq" else 1.0) * x.shape[1] * prior_var
    fn = _KERNELS[kernel]
    off_x = 1 - torch.eye(n, device=x.device, dtype=x.dtype)
    off_y = 1 - torch.eye(m, device=y.device, dtype=y.dtype)
    d_xx, d_yy, d_xy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    total = x.new_zeros(())
    for scale in scales:
        c = base * scale
        within_x = (fn(d_xx, c) * off_x).sum() / (n * (n - 1))
        within_y = (fn(d_yy, c) * off_y).sum() / (m * (m - 1))
        across = fn(d_xy, c).mean()
        total = total + within_x + within_y - 2 * across
    return total


def _blur(x: Tensor) -> Tensor:
    """The 5x5 binomial low-pass filter of Burt and Adelson's pyramid, per channel, edges replicated."""
    taps = x.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (taps[:, None] * taps[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=x.shape[1])


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """The Laplacian pyramid of images ``(B, C, H, W)``: ``levels - 1`` band-pass images, finest
    first, then the low-pass residual. Each band is ``G_j - up(G_{j+1})``, ``G_{j+1}`` the
    blurred, 2x subsampled ``G_j``; odd sides are handled by upsampling to the finer size."""
    bands = []
    current = x
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 2:
            break
        coarser = _blur(current)[..., ::2, ::2]
        up = F.interpolate(coarser, size=current.shape[-2:], mode="bilinear", align_corners=False)
        bands.append(current - up)
        current = coarser
    bands.append(current)
    return bands


def laplacian_l1_loss(x_hat: Tensor, x: Tensor, levels: int = 4) -> Tensor:
    """The Laplacian-pyramid L1 distance of GLO (Bojanowski et al., 2018), per sample; shape (B,).

    ``Lap_1(x, x') = sum_j 2^(2j) |L^j(x) - L^j(x')|_1``, level ``j`` counted from the finest:
    the weight makes up for the 4^j times fewer pixels of coarser levels. Here divided by the
    pixel count of the images, so it is a sum of per-level mean absolute differences. Unlike a
    plain L1 or squared error it weighs edges and coarse structure alike, and needs no weights.
    """
    total = x.new_zeros(x.shape[0])
    for j, (a, b) in enumerate(zip(laplacian_pyramid(x_hat, levels), laplacian_pyramid(x, levels), strict=True)):
        total = total + 4.0**j * (a - b).abs().flatten(1).sum(1)
    return total / x[0].numel()
