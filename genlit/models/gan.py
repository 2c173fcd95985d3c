"""The GAN family: one discriminator, one generator, a choice of adversarial loss."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from genlit.losses import discriminator_loss, generator_loss
from genlit.models.base import AdversarialModel

GANLoss = Literal["minimax", "non_saturating", "least_squares", "hinge"]


class GAN(AdversarialModel):
    """A generative adversarial network (Goodfellow et al., 2014) with a choice of loss.

    ``minimax`` is the saturating ``log(1 - D(G(z)))`` game of the original paper (MM GAN),
    ``non_saturating`` its ``-log D(G(z))`` heuristic (NS GAN), ``least_squares`` is LSGAN
    (Mao et al., 2017) and ``hinge`` the hinge loss of SAGAN / BigGAN. The discriminator
    returns one logit per sample.

    Args:
        *args: ``generator, discriminator, generator_optimizer, discriminator_optimizer``, in
            this order (see :class:`AdversarialModel`).
        loss: The adversarial loss.
        k: Discriminator steps per generator step (Algorithm 1 of Goodfellow et al.).
        **kwargs: The other arguments of :class:`AdversarialModel`.
    """

    capturable = True

    def __init__(self, *args: Any, loss: GANLoss = "non_saturating", k: int = 1, **kwargs: Any) -> None:
        if k < 1:
            raise ValueError(f"k (discriminator steps per generator step) must be >= 1, got {k}")
        super().__init__(*args, **kwargs)
        self.loss = loss
        self.discriminator_steps = k
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
