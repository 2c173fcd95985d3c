"""Wasserstein autoencoders (Tolstikhin et al., 2018): match the aggregate posterior to the prior.

A VAE pulls every ``q(z|x)`` towards ``p(z)``, a regulariser too weak to make the aggregate
``q(z) = E_x q(z|x)`` equal ``p(z)`` (the lecture's ELBO-surgery table) and strong enough to blur
reconstructions. WAE penalises the distance between ``q(z)`` and ``p(z)`` directly, which the
WAE paper derives from the primal form of the optimal-transport cost ``W_c(P_X, P_G)``:

    min  E_x E_q(z|x) c(x, G(z)) + lambda * D_Z(q(z), p(z)),   c(x, y) = ||x - y||^2,

with ``D_Z`` the MMD (WAE-MMD, Algorithm 2) or a GAN in latent space (WAE-GAN, Algorithm 1).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.losses import (
    MMDKernel,
    mmd_penalty,
    non_saturating_discriminator_loss,
    non_saturating_generator_loss,
)
from genlit.models.ae import AutoencoderModel, Reconstruction
from genlit.models.optimizers import build_optimizer

Regularizer = Literal["mmd", "gan"]


class WAE(AutoencoderModel):
    """Wasserstein autoencoder with an MMD or adversarial penalty on the codes.

    ``mmd``: the unbiased MMD between the batch's codes and as many prior draws, summed over
    the WAE paper's kernel scales (``C = 2 d sigma_z^2`` times 0.1 ... 10 for the IMQ kernel).
    ``gan``: a latent discriminator learns to tell prior draws (label 1) from codes (label 0)
    with the non-saturating loss; the encoder is penalised by ``-log D(z)``. The two updates
    alternate on every batch (discriminator, then encoder and decoder), each with the other's
    weights frozen, so ``trainer.global_step`` advances by 2 per batch. ``sample`` decodes
    prior draws.

    The arguments keep the order ``encoder, decoder, discriminator, optimizer,
    discriminator_optimizer`` (the latent discriminator belongs with the networks), which is
    why this model states the shared ones again rather than taking them from
    :class:`AutoencoderModel` by position.

    Args:
        encoder: Encoder exposing ``latent_dim``; deterministic, or Gaussian (codes are then
            reparameterised draws from q(z|x)).
        decoder: Decoder exposing the same ``latent_dim``, returning raw outputs.
        discriminator: Latent discriminator, codes to one logit each; only with ``gan``.
        optimizer: Optimizer factory for the encoder's and decoder's parameters (``None``:
            Adam with torch's default settings).
        discriminator_optimizer: Optimizer factory for the discriminator's parameters
            (``None``: Adam).
        regularizer: ``mmd`` (WAE-MMD) or ``gan`` (WAE-GAN).
        reg_weight: The penalty weight lambda.
        kernel: MMD kernel, ``imq`` (the paper's choice) or ``rbf``.
        reconstruction: ``mse`` (the squared error ``||x - tanh(out)||^2`` of the paper) or
            ``bce`` (Bernoulli cross-entropy of logits).
    """

    networks = (*AutoencoderModel.networks, "discriminator")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        discriminator: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        regularizer: Regularizer = "mmd",
        reg_weight: float = 10.0,
        kernel: MMDKernel = "imq",
        reconstruction: Reconstruction = "mse",
    ) -> None:
        if regularizer not in ("mmd", "gan"):
            raise ValueError(f"unknown regularizer {regularizer!r}: choose 'mmd' or 'gan'")
        if reg_weight < 0:
            raise ValueError(f"reg_weight (lambda) must be >= 0, got {reg_weight}")
        if kernel not in ("imq", "rbf"):
            raise ValueError(f"unknown kernel {kernel!r}: choose 'imq' or 'rbf'")
        if reconstruction not in ("mse", "bce"):
            raise ValueError(f"unknown reconstruction {reconstruction!r}: choose 'mse' or 'bce'")
        if (regularizer == "gan") != (discriminator is not None):
            raise ValueError(
                "a latent discriminator is needed with regularizer 'gan' and only then"
            )
        if (
            discriminator is not None
            and getattr(discriminator, "latent_dim", encoder.latent_dim) != encoder.latent_dim
        ):
            raise ValueError(
                f"discriminator latent_dim={discriminator.latent_dim} differs from the encoder's "
                f"{encoder.latent_dim}: give both the same latent_dim"
            )
        super().__init__(encoder, decoder, optimizer)
        self.set_likelihood(reconstruction)
        self.automatic_optimization = False
        self.ddp_find_unused_parameters = regularizer == "gan"
        self.discriminator = discriminator
        self.discriminator_optimizer = discriminator_optimizer or torch.optim.Adam
        self.regularizer, self.reg_weight, self.kernel = regularizer, reg_weight, kernel

    @property
    def optimizer_steps_per_generator_step(self) -> int:
        return 2 if self.regularizer == "gan" else 1

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        optimizers = [build_optimizer(self.optimizer, self.autoencoder_parameters(), "optimizer")]
        if self.discriminator is not None:
            optimizers.append(
                build_optimizer(
                    self.discriminator_optimizer, self.discriminator.parameters(), "discriminator_optimizer"
                )
            )
        return optimizers

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.unpack(batch)
        optimizers = self.optimizers()
        opt_ae = optimizers[0] if isinstance(optimizers, list) else optimizers
        # One encoder pass serves both updates: the discriminator sees the codes detached, and
        # the encoder's weights do not change before the autoencoder update backpropagates.
        z = self.reparameterize(*self.encode(real))  # (B, latent_dim)
        metrics: dict[str, Tensor | None] = {}
        if self.discriminator is not None:
            d_out = self.run_phase(
                "d_loss", optimizers[1], self.discriminator,
                lambda: self.discriminator_step(z.detach()), "grad_norm_d",
            )
            metrics.update({("d_loss" if k == "loss" else k): v for k, v in d_out.items()})
        ae_out = self.run_phase(
            "loss", opt_ae, (self.encoder, self.decoder), lambda: self.autoencoder_step(real, z)
        )
        self.log_train({**ae_out, **{k: v for k, v in metrics.items() if v is not None}})

    def discriminator_step(self, codes: Tensor) -> dict[str, Tensor]:
        """The latent discriminator's loss: prior draws are "real", detached codes "fake"."""
        prior_out = self.discriminator(self.noise(codes.shape[0]))  # (B,)
        code_out = self.discriminator(codes)  # (B,)
        return {
            "loss": non_saturating_discriminator_loss(prior_out, code_out),
            "d_real": prior_out.detach().mean(),
            "d_fake": code_out.detach().mean(),
        }

    def autoencoder_step(self, real: Tensor, z: Tensor) -> dict[str, Tensor]:
        """Reconstruction cost plus lambda times the latent penalty, for codes ``z`` of ``real``."""
        recon = self.reconstruction_loss(self.decoder(z), real).mean()
        if self.regularizer == "mmd":
            penalty = mmd_penalty(z, self.noise(z.shape[0]), kernel=self.kernel)
            key = "mmd"
        else:
            penalty = non_saturating_generator_loss(self.discriminator(z))
            key = "g_loss"
        return {
            "loss": recon + self.reg_weight * penalty,
            "recon": recon.detach(),
            key: penalty.detach(),
        }
