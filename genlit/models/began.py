"""BEGAN: a discriminator that is an autoencoder, kept in balance with the generator."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from genlit.errors import GenlitError
from genlit.models.base import AdversarialModel


class BEGAN(AdversarialModel):
    """Boundary Equilibrium GAN (Berthelot, Schumm and Metz, 2017, arXiv:1703.10717).

    The discriminator ``D`` is an autoencoder (e.g. :class:`genlit.networks.began.BEGANAutoencoder`)
    and ``L(v) = mean |v - D(v)|`` its reconstruction error. The two losses are

        L_D = L(x) - k_t L(G(z_D)),        L_G = L(G(z_G)),

    and after every generator update the balance term moves ``k_t`` (``k_0`` = ``k_init``):

        k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1).

    ``gamma = E[L(G(z))] / E[L(x)]`` is the diversity ratio the equilibrium aims at: lower values
    give sharper, less varied samples. The convergence measure
    ``M_global = L(x) + |gamma L(x) - L(G(z_G))|`` is logged as ``train/convergence`` with
    ``train/k`` on every logging step. ``k_t`` is a buffer: it travels in checkpoints, and a
    resumed run continues it exactly. Under DDP ``L(x)`` and ``L(G(z))`` are averaged over the
    ranks before the update, so every rank holds the same ``k_t``.

    The discriminator phase leaves the generator frozen and the generator phase the
    discriminator, so ``L_G`` never reaches the discriminator's weights. Images must lie in
    [-1, 1], the range of the tanh genlit's BEGAN discriminator ends in; the generator ends
    linearly, as in the paper (a tanh there saturated to all-black images on MNIST), and
    ``sample`` clamps its outputs to [-1, 1].

    Defaults are the paper's: gamma 0.5, lambda_k 0.001, Adam with lr 1e-4 and beta1 0.5 (set
    it in the config; the paper decays the rate when the convergence measure stalls).

    Args:
        *args: ``generator, discriminator, generator_optimizer, discriminator_optimizer``, in
            this order (see :class:`AdversarialModel`); the discriminator maps images to
            reconstructions of the same shape.
        gamma: The diversity ratio, in (0, 1].
        lambda_k: The proportional gain of ``k_t``'s update.
        k_init: ``k_0``, in [0, 1].
        **kwargs: The other arguments of :class:`AdversarialModel`.
    """

    def __init__(
        self, *args: Any, gamma: float = 0.5, lambda_k: float = 0.001, k_init: float = 0.0, **kwargs: Any
    ) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma (BEGAN's diversity ratio) must lie in (0, 1], got {gamma}")
        if lambda_k < 0:
            raise ValueError(f"lambda_k (the gain of k's update) must be >= 0, got {lambda_k}")
        if not 0.0 <= k_init <= 1.0:
            raise ValueError(f"k_init must lie in [0, 1], got {k_init}")
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.lambda_k = lambda_k
        self.register_buffer("k", torch.tensor(float(k_init)))
        self._real_error: Tensor | None = None  # L(x) of the last discriminator step

    def generate(self, z: Tensor, network: nn.Module | None = None) -> Tensor:
        """Samples for grids, FID and ``genlit sample``: the generator's images clamped to [-1, 1]
        (training uses them unclamped, so that values outside cost reconstruction error)."""
        return super().generate(z, network).clamp(-1.0, 1.0)

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """``L(v)``: the discriminator's mean absolute reconstruction error over the batch."""
        reconstruction = self.discriminator(v)
        if reconstruction.shape != v.shape:
            raise GenlitError(
                f"BEGAN's discriminator ({type(self.discriminator).__name__}) returned shape "
                f"{tuple(reconstruction.shape)} for inputs of shape {tuple(v.shape)}: it must be an "
                "autoencoder returning reconstructions (e.g. genlit.networks.began.BEGANAutoencoder)"
            )
        return (v - reconstruction).abs().mean()

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        fake = self.generate_detached(real.shape[0])
        real_error = self.reconstruction_error(real)
        fake_error = self.reconstruction_error(fake)
        self._real_error = real_error.detach()
        return {
            "loss": real_error - self.k * fake_error,
            "d_real": self._real_error,
            "d_fake": fake_error.detach(),
        }

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        return {"loss": self.reconstruction_error(self.generator(self.noise(batch_size)))}

    @torch.no_grad()
    def after_generator_update(self, outputs: dict[str, Tensor]) -> None:
        real, fake = self._mean_over_ranks(torch.stack([self._real_error.float(), outputs["loss"].detach().float()]))
        balance = self.gamma * real - fake
        self.k.copy_(torch.clamp(self.k + self.lambda_k * balance, 0.0, 1.0))
        outputs["k"] = self.k.clone()
        outputs["convergence"] = real + balance.abs()

    def _mean_over_ranks(self, values: Tensor) -> Tensor:
        trainer = self.attached_trainer
        if trainer is None or trainer.world_size == 1:
            return values
        return trainer.strategy.reduce(values, reduce_op="mean")
