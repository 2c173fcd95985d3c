"""Wasserstein GANs: a critic kept 1-Lipschitz by weight clipping or by a gradient penalty."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.losses import (
    gradient_penalty,
    wasserstein_discriminator_loss,
    wasserstein_generator_loss,
)
from genlit.models.base import _NOT_HPARAMS, AdversarialModel


class _Critic(AdversarialModel):
    """The shared step of both WGANs: critic values, their gap, the generator's ``-E[f(G(z))]``."""

    def critic_outputs(self, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fake = self.generate_detached(real.shape[0])
        return fake, self.discriminator(real), self.discriminator(fake)  # (B,), (B,)

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        fake_out = self.discriminator(self.generator(self.noise(batch_size)))  # (B,)
        return {"loss": wasserstein_generator_loss(fake_out)}

    @property
    def critic(self) -> nn.Module:
        return self.discriminator


class WGAN(_Critic):
    """Wasserstein GAN with weight clipping (Arjovsky et al., 2017, Algorithm 1).

    After every critic update each critic weight is clipped to ``[-clip, clip]``, a crude way
    of keeping the critic K-Lipschitz. The paper's defaults: RMSprop with lr 5e-5 (set it in
    the config), ``clip = 0.01``, ``n_critic = 5``.

    Args:
        generator: Network mapping ``(B, latent_dim)`` noise to samples; must expose ``latent_dim``.
        discriminator: The critic, mapping samples to one real value each, shape ``(B,)``.
        generator_optimizer: Optimizer factory for the generator's parameters.
        discriminator_optimizer: Optimizer factory for the critic's parameters.
        clip: Half-width ``c`` of the box ``[-c, c]`` the critic's weights are clipped to.
        n_critic: Critic steps per generator step.
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
        generator_optimizer: OptimizerCallable = torch.optim.RMSprop,
        discriminator_optimizer: OptimizerCallable = torch.optim.RMSprop,
        clip: float = 0.01,
        n_critic: int = 5,
        ema_decay: float | None = None,
        compile_generator: bool = False,
        compile_discriminator: bool = False,
        channels_last: bool = False,
    ) -> None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        if n_critic < 1:
            raise ValueError(f"n_critic (critic steps per generator step) must be >= 1, got {n_critic}")
        super().__init__(
            generator, discriminator, generator_optimizer, discriminator_optimizer, n_critic,
            ema_decay, compile_generator, compile_discriminator, channels_last
        )
        self.save_config(ignore=_NOT_HPARAMS)
        self.clip = clip

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        _, real_out, fake_out = self.critic_outputs(real)
        loss = wasserstein_discriminator_loss(real_out, fake_out)
        return {"loss": loss, "wasserstein": -loss.detach(),
                "d_real": real_out.detach().mean(), "d_fake": fake_out.detach().mean()}

    @torch.no_grad()
    def after_discriminator_update(self) -> None:
        # Clip weights and biases alike, as the paper does: every parameter of the critic.
        torch._foreach_clamp_min_(params := list(self.discriminator.parameters()), -self.clip)
        torch._foreach_clamp_max_(params, self.clip)


class WGANGP(_Critic):
    """Wasserstein GAN with gradient penalty (Gulrajani et al., 2017, Algorithm 1).

    The critic is pushed towards unit gradient norm on random interpolates between real and
    fake samples. Defaults follow the paper: ``lambda = 10``, ``n_critic = 5``, Adam with
    lr 1e-4 and betas (0, 0.9) (set them in the config). The critic must not use batch norm:
    the penalty is per sample, and batch norm couples the samples of a batch.

    Args:
        generator: Network mapping ``(B, latent_dim)`` noise to samples; must expose ``latent_dim``.
        discriminator: The critic, mapping samples to one real value each, shape ``(B,)``.
        generator_optimizer: Optimizer factory for the generator's parameters.
        discriminator_optimizer: Optimizer factory for the critic's parameters.
        gp_weight: The penalty coefficient lambda.
        n_critic: Critic steps per generator step.
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
        gp_weight: float = 10.0,
        n_critic: int = 5,
        ema_decay: float | None = None,
        compile_generator: bool = False,
        compile_discriminator: bool = False,
        channels_last: bool = False,
    ) -> None:
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if n_critic < 1:
            raise ValueError(f"n_critic (critic steps per generator step) must be >= 1, got {n_critic}")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules()):
            raise ValueError(
                "WGANGP's critic contains batch norm, which breaks the per-sample gradient "
                "penalty: build it without (e.g. DCGANDiscriminator(batch_norm=false))."
            )
        super().__init__(
            generator, discriminator, generator_optimizer, discriminator_optimizer, n_critic,
            ema_decay, compile_generator, compile_discriminator, channels_last
        )
        self.save_config(ignore=_NOT_HPARAMS)
        self.gp_weight = gp_weight
        self.double_backward = gp_weight > 0

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        fake, real_out, fake_out = self.critic_outputs(real)
        gap = fake_out.mean() - real_out.mean()
        gp = gradient_penalty(self.discriminator, real, fake, weight=self.gp_weight)
        return {"loss": gap + gp, "wasserstein": -gap.detach(), "gp": gp.detach(),
                "d_real": real_out.detach().mean(), "d_fake": fake_out.detach().mean()}
