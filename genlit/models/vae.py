"""The variational autoencoder, with the ELBO surgery of Hoffman & Johnson as a validation metric."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from genlit.losses import gaussian_kl
from genlit.metrics.elbo import elbo_surgery
from genlit.models.ae import AutoencoderModel

Likelihood = Literal["bernoulli", "gaussian"]


class VAE(AutoencoderModel):
    """Variational autoencoder (Kingma & Welling, 2014) with a beta-weighted KL (Higgins et al., 2017).

    Training minimises ``-log p(x|z) + beta * KL(q(z|x) || N(0, I))`` per image, one
    reparameterised draw ``z = mean + sigma * eps`` per image; ``beta = 1`` is the negative ELBO.
    All values are nats per image (sums over pixels and latent dimensions).

    Validation logs ``val/recon`` (``-E_q log p(x|z)``, one draw), ``val/kl`` (analytic),
    ``val/elbo`` (their negated sum, whatever ``beta``) and the ELBO surgery over the whole
    validation set: ``val/kl = val/mutual_info + val/marginal_kl`` (see
    :mod:`genlit.metrics.elbo` for the estimator; the mutual information cannot exceed the log of
    the number of validation images).

    Args:
        *args: ``encoder, decoder, optimizer`` in this order (see :class:`AutoencoderModel`);
            the encoder must be Gaussian (``gaussian=True``), returning ``(mean, log_variance)``.
        likelihood: ``bernoulli`` (decoder logits, targets ``(x + 1) / 2`` in [0, 1]; grey
            levels are kept, so the value is a cross-entropy) or ``gaussian`` (mean ``tanh`` of
            the output, fixed standard deviation ``decoder_std``, in the [-1, 1] pixel scale).
        decoder_std: Standard deviation of the Gaussian decoder.
        beta: Weight of the KL term; 1 gives the ELBO.
        surgery_samples: Monte-Carlo draws per validation image for the marginal KL; 0 turns
            the ELBO surgery off.
        binarize: Dynamic binarisation (Bernoulli likelihood only): every time an image is
            used, each pixel becomes 1 with probability ``(x + 1) / 2``, else 0 (validation
            draws from a fixed seed). The ELBO is then a bound on the log-likelihood of binary
            images, the protocol of the MNIST numbers in the literature; with grey levels the
            cross-entropy also counts the pixels' own entropy (about 46 nats per MNIST image).
        **kwargs: The other arguments of :class:`AutoencoderModel`.
    """

    def __init__(
        self,
        *args: Any,
        likelihood: Likelihood = "bernoulli",
        decoder_std: float = 0.1,
        beta: float = 1.0,
        surgery_samples: int = 1,
        binarize: bool = False,
        **kwargs: Any,
    ) -> None:
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"unknown likelihood {likelihood!r}: choose 'bernoulli' or 'gaussian'")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if surgery_samples < 0:
            raise ValueError(f"surgery_samples must be >= 0, got {surgery_samples}")
        if binarize and likelihood != "bernoulli":
            raise ValueError("binarize needs likelihood 'bernoulli'")
        super().__init__(*args, **kwargs)
        if not self.gaussian_encoder:
            raise ValueError("VAE needs a Gaussian encoder: build it with gaussian: true")
        self.set_likelihood(likelihood, decoder_std)
        self.beta, self.surgery_samples = beta, surgery_samples
        self.binarize = binarize
        self._val_codes: list[tuple[Tensor, Tensor]] = []

    def binarized(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` itself, or a binary draw in {-1, 1} with P(1) = (x + 1) / 2 when ``binarize`` is on."""
        if not self.binarize:
            return x
        return torch.bernoulli((x + 1) / 2, generator=generator) * 2 - 1

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.binarized(self.unpack(batch))
        mean, log_var = self.encoder(x)  # (B, latent_dim) each
        recon = self.reconstruction_loss(self.decoder(self.reparameterize(mean, log_var)), x).mean()
        kl = gaussian_kl(mean, log_var).mean()
        loss = recon + self.beta * kl
        self.check_loss("loss", loss)
        self.log_train({"loss": loss, "recon": recon, "kl": kl})
        return loss

    # --- validation: the ELBO and its surgery --------------------------------------------

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_codes = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self.binarized(self.unpack(batch), self._val_rng)
        mean, log_var, recon = self.validate_batch(x)
        kl = gaussian_kl(mean, log_var)  # (B,)
        batch_size = x.shape[0]
        self.log("val/kl", kl.mean(), batch_size=batch_size, on_epoch=True)
        self.log(
            "val/elbo", -(recon + kl).mean(), batch_size=batch_size, on_epoch=True, prog_bar=True
        )
        if self.surgery_samples > 0:
            self._val_codes.append((mean.detach(), log_var.detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_codes:
            return
        mean = torch.cat([m for m, _ in self._val_codes])  # (N, latent_dim)
        log_var = torch.cat([v for _, v in self._val_codes])
        self._val_codes = []
        if mean.shape[0] < 2:
            return
        parts = elbo_surgery(mean, log_var, self.surgery_samples, generator=self._val_rng)
        self.log("val/mutual_info", parts.mutual_info)
        self.log("val/marginal_kl", parts.marginal_kl)
