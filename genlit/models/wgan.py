"""Wasserstein GANs: a critic kept 1-Lipschitz by weight clipping or by a gradient penalty."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from genlit.losses import (
    gradient_penalty,
    wasserstein_discriminator_loss,
    wasserstein_generator_loss,
)
from genlit.models.base import AdversarialModel

# Every batch-norm flavour torch offers publicly (the lazy ones become these once built).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class WassersteinGAN(AdversarialModel):
    """What both WGANs share: ``n_critic`` critic steps per generator step, the critic's gap,
    and the generator's loss ``-E[f(G(z))]``.

    Args:
        *args: ``generator, discriminator, generator_optimizer, discriminator_optimizer``, in
            this order (see :class:`AdversarialModel`); the discriminator is the critic,
            mapping samples to one real value each, shape ``(B,)``.
        n_critic: Critic steps per generator step.
        **kwargs: The other arguments of :class:`AdversarialModel`.
    """

    capturable = True

    def __init__(self, *args: Any, n_critic: int = 5, **kwargs: Any) -> None:
        if n_critic < 1:
            raise ValueError(f"n_critic (critic steps per generator step) must be >= 1, got {n_critic}")
        super().__init__(*args, **kwargs)
        self.discriminator_steps = n_critic

    @property
    def critic(self) -> nn.Module:
        """The discriminator, by its WGAN name."""
        return self.discriminator

    def critic_outputs(self, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fresh fakes (no graph to the generator) and the critic's values on both, (B,) each."""
        fake = self.generate_detached(real.shape[0])
        return fake, self.discriminator(real), self.discriminator(fake)

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        fake_out = self.discriminator(self.generator(self.noise(batch_size)))  # (B,)
        return {"loss": wasserstein_generator_loss(fake_out)}


class WGAN(WassersteinGAN):
    """Wasserstein GAN with weight clipping (Arjovsky et al., 2017, Algorithm 1).

    After every critic update each critic weight is clipped to ``[-clip, clip]``, a crude way
    of keeping the critic K-Lipschitz. The paper's defaults: RMSprop (the default optimizer
    here) with lr 5e-5 (set it in the config), ``clip = 0.01``, ``n_critic = 5``.

    Args:
        *args: ``generator, discriminator, generator_optimizer, discriminator_optimizer``, in
            this order (see :class:`AdversarialModel`).
        clip: Half-width ``c`` of the box ``[-c, c]`` the critic's weights are clipped to.
        **kwargs: ``n_critic`` (see :class:`WassersteinGAN`) and the other arguments of
            :class:`AdversarialModel`.
    """

    default_optimizer = torch.optim.RMSprop

    def __init__(self, *args: Any, clip: float = 0.01, **kwargs: Any) -> None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        super().__init__(*args, **kwargs)
        self.clip = clip

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        _, real_out, fake_out = self.critic_outputs(real)
        loss = wasserstein_discriminator_loss(real_out, fake_out)
        return {"loss": loss, "wasserstein": -loss.detach(),
                "d_real": real_out.detach().mean(), "d_fake": fake_out.detach().mean()}

    @torch.no_grad()
    def after_discriminator_update(self) -> None:
        # Clip weights and biases alike, as the paper does: every parameter of the critic.
        for p in self.discriminator.parameters():
            p.clamp_(-self.clip, self.clip)


class WGANGP(WassersteinGAN):
    """Wasserstein GAN with gradient penalty (Gulrajani et al., 2017, Algorithm 1).

    The critic is pushed towards unit gradient norm on random interpolates between real and
    fake samples. Defaults follow the paper: ``lambda = 10``, ``n_critic = 5``, Adam with
    lr 1e-4 and betas (0, 0.9) (set them in the config). The critic must not use batch norm:
    the penalty is per sample, and batch norm couples the samples of a batch.

    Args:
        *args: ``generator, discriminator, generator_optimizer, discriminator_optimizer``, in
            this order (see :class:`AdversarialModel`).
        gp_weight: The penalty coefficient lambda.
        **kwargs: ``n_critic`` (see :class:`WassersteinGAN`) and the other arguments of
            :class:`AdversarialModel`.
    """

    def __init__(self, *args: Any, gp_weight: float = 10.0, **kwargs: Any) -> None:
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        super().__init__(*args, **kwargs)
        if any(isinstance(m, _BATCH_NORMS) for m in self.discriminator.modules()):
            raise ValueError(
                "WGANGP's critic contains batch norm, which breaks the per-sample gradient "
                "penalty: build it without (e.g. DCGANDiscriminator(batch_norm=false))."
            )
        self.gp_weight = gp_weight
        self.double_backward = gp_weight > 0

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        fake, real_out, fake_out = self.critic_outputs(real)
        gap = fake_out.mean() - real_out.mean()
        gp = gradient_penalty(self.discriminator, real, fake, weight=self.gp_weight)
        return {"loss": gap + gp, "wasserstein": -gap.detach(), "gp": gp.detach(),
                "d_real": real_out.detach().mean(), "d_fake": fake_out.detach().mean()}
