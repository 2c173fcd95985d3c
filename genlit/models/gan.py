"""The GAN family: one discriminator, one generator, a choice of adversarial loss."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.losses import discriminator_loss, generator_loss
from genlit.models.base import _NOT_HPARAMS, AdversarialModel

GANLoss = Literal["minimax", "non_saturating", "least_squares", "hinge"]


class GAN(AdversarialModel):
    """A generative adversarial network (Goodfellow et al., 2014) with a choice of loss.

    ``minimax`` is the saturating ``log(1 - D(G(z)))`` game of the original paper (MM GAN),
    ``non_saturating`` its ``-log D(G(z))`` heuristic (NS GAN), ``least_squares`` is LSGAN
    (Mao et al., 2017) and ``hinge`` the hinge loss of SAGAN / BigGAN.

    Args:
        generator: Network mapping ``(B, latent_dim)`` noise to samples; must expose ``latent_dim``.
        discriminator: Network mapping samples to one logit each, shape ``(B,)``.
        generator_optimizer: Optimizer factory for the generator's parameters.
        discriminator_optimizer: Optimizer factory for the discriminator's parameters.
        loss: The adversarial loss.
        k: Discriminator steps per generator step (Algorithm 1 of Goodfellow et al.).
        ema_decay: When set (e.g. 0.999), ``sample`` uses an exponential moving average of the
            generator's weights, updated after every generator step.
        compile_generator: Compile the generator with ``torch.compile`` (faster steps after a
            one-off compilation; see ``benchmarks/speed.py``).
        compile_discriminator: Compile the discriminator (ignored, with a warning, when a
            gradient penalty needs its double backward, which the compiler does not support).
        channels_last: Keep image networks and batches in channels-last memory layout.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        loss: GANLoss = "non_saturating",
        k: int = 1,
        ema_decay: float | None = None,
        compile_generator: bool = False,
        compile_discriminator: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            generator, discriminator, generator_optimizer, discriminator_optimizer, k, ema_decay,
            compile_generator, compile_discriminator, channels_last,
        )
        self.save_config(ignore=_NOT_HPARAMS)
        self.loss = loss
        self.d_loss_fn = discriminator_loss(loss)
        self.g_loss_fn = generator_loss(loss)

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        fake = self.generate_detached(real.shape[0])
        real_out = self.discriminator(real)  # (B,)
        fake_out = self.discriminator(fake)  # (B,)
        return {
            "loss": self.d_loss_fn(real_out, fake_out),
            "d_real": real_out.detach().mean(),
            "d_fake": fake_out.detach().mean(),
        }

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        fake_out = self.discriminator(self.generator(self.noise(batch_size)))  # (B,)
        return {"loss": self.g_loss_fn(fake_out)}
