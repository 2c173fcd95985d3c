"""Plain autoencoders, and the machinery every autoencoder model shares (VAE and WAE build on it).

A plain autoencoder only learns to reconstruct: nothing makes its codes look like N(0, I), so
decoding prior draws gives garbage (the lecture's starting point). Ghosh et al. (2020, "From
variational to deterministic autoencoders") generate anyway by *ex-post density estimation*:
fit a density to the training codes after training and sample from that. :class:`AE` fits a
full-covariance Gaussian; ``ex_post=False`` samples the prior instead, to show the difference.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.batches import full_pass
from genlit.losses import (
    bernoulli_reconstruction_loss,
    gaussian_reconstruction_loss,
    mmd_penalty,
    squared_error_reconstruction_loss,
)
from genlit.models import random_state
from genlit.models.base import GenerativeModel
from genlit.models.buffers import distributed
from genlit.models.optimizers import build_optimizer

Reconstruction = Literal["mse", "bce"]
_LIKELIHOODS = ("mse", "bce", "bernoulli", "gaussian")


class AutoencoderModel(GenerativeModel):
    """Encoder, decoder, the decoder's output link, ``reconstruct``, ``sample`` and validation.

    The decoder returns raw values; the likelihood (set by each model from its own argument)
    fixes the link to images in [-1, 1]: ``bce``/``bernoulli`` read them as logits of
    ``(x + 1) / 2`` (images ``2 sigmoid - 1``), ``mse``/``gaussian`` as pre-tanh means.
    Validation logs ``val/recon`` (nats or squared error per image) and ``val/mmd``, the IMQ MMD
    between encoded validation codes and prior draws: the same gauge of "does q(z) match p(z)"
    for every model of the family.

    Args:
        encoder: Encoder exposing ``latent_dim``: deterministic, or Gaussian (``gaussian=True``,
            returning ``(mean, log_variance)``) as each model requires.
        decoder: Decoder exposing the same ``latent_dim``, returning raw outputs.
        optimizer: Optimizer factory for the encoder's and decoder's parameters (``None``:
            Adam with torch's default settings).
    """

    networks = ("encoder", "decoder")

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, optimizer: OptimizerCallable | None = None
    ) -> None:
        super().__init__()
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not hasattr(net, "latent_dim"):
                raise ValueError(f"the {name} ({type(net).__name__}) has no 'latent_dim' attribute")
        if encoder.latent_dim != decoder.latent_dim:
            raise ValueError(
                f"encoder latent_dim={encoder.latent_dim} differs from decoder "
                f"latent_dim={decoder.latent_dim}: give both the same latent_dim"
            )
        self.encoder, self.decoder = encoder, decoder
        self.optimizer = optimizer or torch.optim.Adam
        self.likelihood = "mse"
        """The reconstruction term: one of ``mse``, ``bce``, ``bernoulli``, ``gaussian``."""
        self.decoder_std = 1.0
        """Standard deviation of a ``gaussian`` decoder."""
        self._val_rng: torch.Generator | None = None

    def set_likelihood(self, likelihood: str, decoder_std: float = 1.0) -> None:
        """Chooses the reconstruction term and the decoder's link (see the class docstring)."""
        if likelihood not in _LIKELIHOODS:
            raise ValueError(
                f"unknown reconstruction loss {likelihood!r}: choose one of {_LIKELIHOODS}"
            )
        if decoder_std <= 0:
            raise ValueError(f"decoder_std must be > 0, got {decoder_std}")
        self.likelihood, self.decoder_std = likelihood, decoder_std

    @property
    def latent_dim(self) -> int:  # type: ignore[override]
        return int(self.decoder.latent_dim)

    @property
    def gaussian_encoder(self) -> bool:
        """Whether the encoder returns ``(mean, log_variance)`` of q(z|x)."""
        return bool(getattr(self.encoder, "gaussian", False))

    # --- encoder and decoder -------------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mean, log_variance)`` of q(z|x), or ``(z, None)`` for a deterministic encoder."""
        out = self.encoder(x)
        return out if self.gaussian_encoder else (out, None)

    @staticmethod
    def reparameterize(
        mean: Tensor, log_var: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The reparameterisation trick ``z = mean + sigma * eps`` (Kingma & Welling, 2014)."""
        if log_var is None:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * log_var).exp() * eps  # (B, latent_dim)

    def to_images(self, raw: Tensor) -> Tensor:
        """Decoder outputs to images in [-1, 1] (the decoder mean); an identity decoder's as they are."""
        if getattr(self.decoder, "identity", False):
            return raw
        if self.likelihood in ("bce", "bernoulli"):
            return torch.tanh(raw / 2)  # = 2 sigmoid(raw) - 1
        return torch.tanh(raw)

    def reconstruction_loss(self, raw: Tensor, x: Tensor) -> Tensor:
        """``-log p(x|z)`` (or the squared error) of raw decoder outputs, per image; shape (B,)."""
        if getattr(self.decoder, "identity", False):
            return squared_error_reconstruction_loss(raw, x)
        if self.likelihood in ("bce", "bernoulli"):
            return bernoulli_reconstruction_loss(raw, x)
        if self.likelihood == "gaussian":
            return gaussian_reconstruction_loss(torch.tanh(raw), x, self.decoder_std)
        return squared_error_reconstruction_loss(torch.tanh(raw), x)

    def decode(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] decoded from codes ``z`` of shape (B, latent_dim)."""
        return self.to_images(self.decoder(z))

    def prior_codes(self, n: int) -> Tensor:
        """The codes ``sample`` decodes: prior draws N(0, I) (AE overrides this)."""
        return self.noise(n)

    @contextmanager
    def _evaluating(self):
        modes = [(m, m.training) for m in (self.encoder, self.decoder)]
        for module, _ in modes:
            module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for module, mode in modes:
                module.train(mode)

    def sample(self, n: int) -> Tensor:
        """Decodes ``n`` codes from :meth:`prior_codes`, networks in eval mode, no gradients."""
        with self._evaluating():
            return self.decode(self.prior_codes(n))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decodes the encoder's mean code of each image, networks in eval mode, no gradients."""
        with self._evaluating():
            return self.decode(self.encode(x)[0])

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer, self.autoencoder_parameters(), "optimizer")

    # --- validation ----------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        # Validation draws (codes, prior samples) come from their own seeded generator, so
        # the metrics are repeatable and training's random stream is left alone.
        self._val_rng = torch.Generator(device=self.device).manual_seed(0)

    def validate_batch(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Logs ``val/recon`` and ``val/mmd``; returns ``(mean, log_var, recon)``, recon (B,)."""
        mean, log_var = self.encode(x)
        z = self.reparameterize(mean, log_var, self._val_rng)
        recon = self.reconstruction_loss(self.decoder(z), x)  # (B,)
        batch = x.shape[0]
        self.log("val/recon", recon.mean(), batch_size=batch, on_epoch=True, prog_bar=True)
        if batch >= 2:
            prior = torch.randn(z.shape, generator=self._val_rng, device=z.device, dtype=z.dtype)
            self.log("val/mmd", mmd_penalty(z, prior), batch_size=batch, on_epoch=True)
        return mean, log_var, recon

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.validate_batch(self.unpack(batch))

    def log_train(self, metrics: dict[str, Tensor]) -> None:
        """Logs ``train/<key>`` on Lightning's logging steps only; ``loss`` goes to the bar."""
        if not self.logs_this_step():
            return
        metrics = {f"train/{key}": v.detach() for key, v in metrics.items()}
        self.log(
            "train/loss", metrics.pop("train/loss"), on_step=True, on_epoch=False, prog_bar=True
        )
        self.log_dict(metrics, on_step=True, on_epoch=False)


class AE(AutoencoderModel):
    """A deterministic autoencoder; generates from a Gaussian fitted to its codes (ex-post).

    Training minimises the reconstruction loss only. ``sample`` decodes draws from
    ``N(latent_mean, latent_cov)``, a full-covariance Gaussian fitted to training codes (the
    RAE paper's ex-post density estimation): refitted at the end of every training epoch from
    the codes that epoch produced, and once more with the final weights over the training set
    at the end of fit (``refit_on_train_end``; or call :meth:`fit_latent_gaussian`). Both are
    buffers, so they travel in checkpoints.

    Args:
        *args: ``encoder, decoder, optimizer`` in this order (see :class:`AutoencoderModel`);
            the encoder must be deterministic (``gaussian=False``).
        reconstruction: ``mse`` (squared error of tanh outputs) or ``bce`` (Bernoulli
            cross-entropy of logits against ``(x + 1) / 2``), summed over pixels.
        ex_post: Sample from the fitted Gaussian; ``False`` decodes prior draws N(0, I),
            which a plain autoencoder was never trained to read.
        refit_on_train_end: Refit the Gaussian over the training batches after the last epoch.
        **kwargs: The other arguments of :class:`AutoencoderModel`.
    """

    def __init__(
        self,
        *args: Any,
        reconstruction: Reconstruction = "mse",
        ex_post: bool = True,
        refit_on_train_end: bool = True,
        **kwargs: Any,
    ) -> None:
        if reconstruction not in ("mse", "bce"):
            raise ValueError(f"unknown reconstruction {reconstruction!r}: choose 'mse' or 'bce'")
        super().__init__(*args, **kwargs)
        if self.gaussian_encoder:
            raise ValueError("AE needs a deterministic encoder: build it with gaussian: false")
        self.set_likelihood(reconstruction)
        self.ex_post = ex_post
        self.refit_on_train_end = refit_on_train_end
        d = self.latent_dim
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_cov", torch.eye(d))
        self.register_buffer("latent_count", torch.zeros((), dtype=torch.long))  # 0: not fitted
        self._moments: tuple[Tensor, Tensor, int] | None = None  # sum z, sum z z^T, count
        self._pending = False  # codes accumulated since the buffers were last updated

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.unpack(batch)
        z = self.encoder(x)  # (B, latent_dim)
        loss = self.reconstruction_loss(self.decoder(z), x).mean()
        self.check_loss("loss", loss)
        self._accumulate(z.detach())
        self.log_train({"loss": loss, "recon": loss})
        return loss

    # --- the ex-post Gaussian ------------------------------------------------------------

    def _reset_moments(self) -> None:
        self._moments = None
        self._pending = False

    def _accumulate(self, z: Tensor) -> None:
        z = z.double()
        moments = (z.sum(0), z.T @ z, z.shape[0])  # (d,), (d, d), count
        if self._moments is not None:
            moments = tuple(old + new for old, new in zip(self._moments, moments, strict=True))
        self._moments = moments
        self._pending = True

    def _commit(self) -> None:
        """Moves the accumulated moments into the buffers (needs more than one code).

        Under DDP the moments of every rank's codes are summed first (a collective: every rank
        commits at the same points), so all ranks fit one Gaussian to all the codes.
        """
        self._pending = False
        if distributed():
            d = self.latent_dim
            s, outer, n = self._moments or (
                torch.zeros(d, dtype=torch.float64, device=self.device),
                torch.zeros(d, d, dtype=torch.float64, device=self.device),
                0,
            )
            pooled = torch.cat([s, outer.reshape(-1), s.new_tensor([float(n)])])
            torch.distributed.all_reduce(pooled)
            s, outer, n = pooled[:d], pooled[d:-1].reshape(d, d), int(pooled[-1].item())
            self._moments = (s, outer, n)
        if self._moments is None or self._moments[2] < 2:
            return
        s, outer, n = self._moments
        mean = s / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        self.latent_mean.copy_(mean)
        self.latent_cov.copy_((cov + cov.T) / 2)
        self.latent_count.fill_(n)

    def on_train_epoch_start(self) -> None:
        self._reset_moments()

    def on_train_epoch_end(self) -> None:
        if self._pending:
            self._commit()

    def agree_across_ranks(self) -> None:
        if self._pending:  # the same on every rank: each ran the same training steps
            self._commit()
        super().agree_across_ranks()

    def on_train_end(self) -> None:
        super().on_train_end()
        self.complete_training()  # done already when the final evaluation or checkpoint ran

    def on_training_complete(self) -> None:
        trainer = self.attached_trainer
        if self.refit_on_train_end and trainer is not None and trainer.train_dataloader is not None:
            limit = trainer.num_training_batches
            streams = random_state.capture()  # a new pass over the loader draws a shuffle order
            try:
                with full_pass(trainer):  # every batch, also those this epoch trained on
                    self.fit_latent_gaussian(
                        trainer.train_dataloader, None if limit == float("inf") else int(limit)
                    )
            finally:
                random_state.restore(streams)

    @torch.no_grad()
    def fit_latent_gaussian(self, batches: Iterable[Any], max_batches: int | None = None) -> None:
        """Fits ``latent_mean`` and ``latent_cov`` to the codes of ``batches`` (encoder in eval mode).

        Args:
            batches: Batches as a dataloader yields them; in-memory index batches are gathered
                through the trainer's datamodule when the model is attached to one.
            max_batches: Use at most this many batches.
        """
        self._reset_moments()
        with self._evaluating():
            for batch in itertools.islice(batches, max_batches):
                x = self.unpack(self.prepare_batch(batch))
                self._accumulate(self.encoder(x))
        self._commit()

    def prior_codes(self, n: int) -> Tensor:
        """Draws from the ex-post Gaussian (the prior N(0, I) when ``ex_post`` is off)."""
        if not self.ex_post:
            return self.noise(n)
        if self._pending and not distributed():
            # Codes of the running epoch, e.g. for a grid drawn before the epoch's end. Under
            # DDP a commit is collective (rank 0 alone may be drawing): the fit agreed at the
            # last evaluation or checkpoint is used instead.
            self._commit()
        cov = self.latent_cov.double()
        jitter = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)
        chol = torch.linalg.cholesky(
            cov + jitter * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        )
        eps = torch.randn(n, self.latent_dim, device=self.device, dtype=cov.dtype)
        return (self.latent_mean.double() + eps @ chol.T).to(self.latent_mean.dtype)  # (n, d)
