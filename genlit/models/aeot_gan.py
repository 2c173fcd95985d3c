"""AE-OT-GAN (An et al., ECCV 2020): AE-OT's decoder sharpened against a discriminator.

AE-OT's samples are decoded codes; its decoder, trained on reconstruction alone, blurs them.
AE-OT-GAN keeps AE-OT's encoder and OT map and trains the decoder further as a generator:
against a discriminator, on two kinds of codes, the encoded codes of real images (paired with
those images) and new codes from the OT map. Its generator loss adds to the adversarial term a
content loss between ``G(E(x))`` and ``x`` and a feature-matching loss between the
discriminator's features of ``G(E(x))`` and of ``x``, so the generator stays an embedding of
the data while its images sharpen; the OT map keeps the codes inside the support (no mode
collapse, no mixture), which the adversarial training alone would not.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.errors import GenlitError
from genlit.losses import discriminator_loss, generator_loss
from genlit.models.aeot import POSITIONS_KEY, CarriesOTMap, load_ot
from genlit.models.base import AdversarialModel
from genlit.models.gan import GANLoss
from genlit.ot import SemiDiscreteOT


def discriminator_features(discriminator: nn.Module, x: Tensor) -> Tensor:
    """The discriminator's last hidden features of ``x``, flattened to ``(B, F)``.

    A discriminator with a ``features(x)`` method is asked; one built as ``net`` (an
    ``nn.Sequential`` ending in its score layer, as genlit's DCGAN and MLP discriminators) gives
    the output of all its layers but the last.
    """
    features = getattr(discriminator, "features", None)
    if callable(features):
        return features(x).flatten(1)
    return discriminator.net[:-1](x).flatten(1)


def _has_features(discriminator: nn.Module) -> bool:
    net = getattr(discriminator, "net", None)
    return callable(getattr(discriminator, "features", None)) or (isinstance(net, nn.Sequential) and len(net) > 1)


class AEOTGAN(CarriesOTMap, AdversarialModel):
    """AE-OT-GAN: a generator started from a trained AE-OT's decoder, trained against a discriminator.

    Each discriminator step scores real images against two kinds of fakes, ``G(E(x))`` for the
    batch's own images and ``G(z)`` for new codes ``z`` of the OT map. Each generator step
    minimises

        adversarial_weight * L_adv(G(E(x)), G(z)) + content_weight * mean (G(E(x)) - x)^2
        + feature_weight * mean (f_D(G(E(x))) - f_D(x))^2

    with ``f_D`` the discriminator's last hidden features. The paper does not give its loss
    weights; the defaults (1, 10, 1) are genlit's choice: the content term, a per-pixel mean of
    images in [-1, 1], is about 0.01-0.05 for a trained autoencoder, so 10 puts it next to the
    adversarial term. ``sample`` decodes OT codes (``G(z)``); the encoder and the map stay
    fixed.

    Args:
        generator: The decoder network (its raw output goes through the AE's link, as in the AE).
        discriminator: Images to one raw score each.
        encoder: The AE's encoder (kept fixed, in eval mode).
        generator_optimizer: Optimizer factory for the generator (``None``: Adam).
        discriminator_optimizer: Optimizer factory for the discriminator (``None``: Adam).
        autoencoder_checkpoint: The trained AE-OT checkpoint (with its fitted map) whose
            encoder, decoder and OT map the fit starts from.
        reconstruction: The AE's link from raw decoder outputs to images: ``mse`` (tanh) or
            ``bce`` (2 sigmoid - 1), as the AE-OT was trained.
        loss: The adversarial loss (see :class:`genlit.models.GAN`).
        adversarial_weight: Weight of the adversarial term.
        content_weight: Weight of the content loss.
        feature_weight: Weight of the feature-matching loss (0: none; needs a discriminator
            with hidden features).
        k: Cells the OT map examines per noise point.
        angle_threshold: pyOMT's fixed facet-angle test (radians); ``null`` (the default): the
            calibrated test of :meth:`genlit.ot.SemiDiscreteOT.generate`.
        weight: Interpolation weight of new codes (``null``, the default: uniform per code).
        singular_neighbours: The calibrated test's neighbour rank.
        **kwargs: The other arguments of :class:`AdversarialModel` (``ema_decay``, ...).
    """

    networks = ("generator", "discriminator", "encoder")

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        encoder: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        autoencoder_checkpoint: str | None = None,
        reconstruction: Literal["mse", "bce"] = "mse",
        loss: GANLoss = "non_saturating",
        adversarial_weight: float = 1.0,
        content_weight: float = 10.0,
        feature_weight: float = 1.0,
        k: int = 20,
        angle_threshold: float | None = None,
        weight: float | None = None,
        singular_neighbours: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(generator, discriminator, generator_optimizer, discriminator_optimizer, **kwargs)
        if reconstruction not in ("mse", "bce"):
            raise ValueError(f"unknown reconstruction {reconstruction!r}: choose 'mse' or 'bce'")
        for name, value in (("adversarial_weight", adversarial_weight), ("content_weight", content_weight),
                            ("feature_weight", feature_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if getattr(encoder, "latent_dim", None) != generator.latent_dim:
            raise ValueError(
                f"encoder latent_dim={getattr(encoder, 'latent_dim', None)} differs from generator "
                f"latent_dim={generator.latent_dim}: give both the AE's latent_dim"
            )
        if feature_weight > 0 and not _has_features(discriminator):
            raise ValueError(
                f"feature_weight > 0 needs the discriminator's hidden features, and "
                f"{type(discriminator).__name__} has no features() method nor a Sequential 'net': "
                "add one, or set feature_weight: 0"
            )
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.autoencoder_checkpoint = autoencoder_checkpoint
        self.reconstruction = reconstruction
        self.d_loss_fn = discriminator_loss(loss)
        self.g_loss_fn = generator_loss(loss)
        self.adversarial_weight, self.content_weight = adversarial_weight, content_weight
        self.feature_weight = feature_weight
        self.k, self.angle_threshold, self.weight = k, angle_threshold, weight
        self.singular_neighbours = singular_neighbours
        self.ot: SemiDiscreteOT | None = None
        self._real: Tensor | None = None

    # --- the starting point -------------------------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.attached_trainer
        resuming = trainer is not None and trainer.ckpt_path is not None
        if stage == "fit" and not resuming and self.ot is None:
            if not self.autoencoder_checkpoint:
                raise GenlitError(
                    "AEOTGAN starts from a trained AE-OT: set model.init_args.autoencoder_checkpoint "
                    "to its checkpoint (train one with configs/<data>/aeot.yaml)"
                )
            self.load_autoencoder(self.autoencoder_checkpoint)

    def load_autoencoder(self, path: str) -> None:
        """Copies the encoder, the decoder (into the generator) and the OT map of an AE-OT checkpoint.

        Raises:
            GenlitError: unreadable file, no fitted map, or networks of another shape.
        """
        from genlit.checkpoints import read_checkpoint  # genlit.checkpoints imports the models

        checkpoint = read_checkpoint(path)
        if checkpoint.get("genlit_ot") is None:
            raise GenlitError(
                f"autoencoder_checkpoint {path} holds no fitted OT map: give the checkpoint an "
                "AE-OT fit wrote after it completed (last.ckpt of configs/<data>/aeot.yaml)"
            )
        state = checkpoint["state_dict"]
        mapping = {f"encoder.{k}": f"encoder.{k}" for k in self.encoder.state_dict()}
        mapping.update({f"generator.{k}": f"decoder.{k}" for k in self.generator.state_dict()})
        own = self.state_dict()
        for mine, theirs in mapping.items():
            if theirs not in state or state[theirs].shape != own[mine].shape:
                found = tuple(state[theirs].shape) if theirs in state else "missing"
                raise GenlitError(
                    f"autoencoder_checkpoint {path} does not fit this model ({theirs} is {found}, "
                    f"here {tuple(own[mine].shape)}): build the encoder and generator as the AE-OT "
                    "run built its encoder and decoder (same latent_dim, width, image_size)"
                )
        self.load_state_dict({mine: state[theirs] for mine, theirs in mapping.items()}, strict=False)
        if self.generator_ema is not None:
            self.generator_ema.module.load_state_dict(self.generator.state_dict())
        theirs = checkpoint.get("hyper_parameters", {}).get("reconstruction")
        if theirs in ("mse", "bce") and theirs != self.reconstruction:
            raise GenlitError(
                f"autoencoder_checkpoint {path} was trained with reconstruction {theirs}, the config "
                f"says {self.reconstruction}: set model.init_args.reconstruction: {theirs}"
            )
        self.ot = load_ot(checkpoint, self.latent_dim).to(self.device)
        self.ot_positions = checkpoint.get(POSITIONS_KEY)

    # --- images and codes ----------------------------------------------------------------

    def to_images(self, raw: Tensor) -> Tensor:
        """The AE's link: raw decoder outputs to images in [-1, 1]."""
        return torch.tanh(raw / 2) if self.reconstruction == "bce" else torch.tanh(raw)

    def generate(self, z: Tensor, network: nn.Module | None = None) -> Tensor:
        """Images ``G(z)`` of codes ``z``, through the AE's link (``sample`` decodes OT codes with it)."""
        return self.to_images((network or self.generator)(z))

    def noise(self, n: int) -> Tensor:
        """``n`` new codes of the OT map (the model's latent distribution)."""
        if self.ot is None:
            raise GenlitError("AEOTGAN has no OT map yet: it comes with autoencoder_checkpoint or a checkpoint")
        seed = int(torch.randint(0, 2**62, (1,), device=self.device).item())
        codes = self.ot.generate(n, self.k, self.angle_threshold, self.weight, generator=torch.Generator().manual_seed(seed),
                                 singular_neighbours=self.singular_neighbours)
        return codes.to(self.device, torch.float32)

    def encode(self, x: Tensor) -> Tensor:
        """The fixed encoder's codes of ``x`` (eval mode, no gradients)."""
        self.encoder.eval()
        with torch.no_grad():
            return self.encoder(x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """``G(E(x))`` with the sampling generator in eval mode."""
        generator = self.sampling_generator
        was_training = generator.training
        generator.eval()
        try:
            return self.generate(self.encode(x), generator)
        finally:
            generator.train(was_training)

    # --- the step ------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self._real = self.unpack(batch)  # the generator step pairs G(E(x)) with these images
        try:
            super().training_step(batch, batch_idx)
        finally:
            self._real = None

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            fakes = torch.cat([self.generate(self.encode(real)), self.generate(self.noise(real.shape[0]))])
        real_out = self.discriminator(real)
        fake_out = self.discriminator(fakes)
        return {
            "loss": self.d_loss_fn(real_out, fake_out),
            "d_real": real_out.detach().mean(),
            "d_fake": fake_out.detach().mean(),
        }

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        real = self._real
        assert real is not None, "generator_step runs inside training_step"
        rebuilt = self.generate(self.encode(real))
        new = self.generate(self.noise(batch_size))
        adversarial = self.g_loss_fn(self.discriminator(torch.cat([rebuilt, new])))
        content = (rebuilt - real).pow(2).mean()
        out = {"adversarial": adversarial.detach(), "content": content.detach()}
        loss = self.adversarial_weight * adversarial + self.content_weight * content
        if self.feature_weight > 0:
            with torch.no_grad():
                target = discriminator_features(self.discriminator, real)
            feature = (discriminator_features(self.discriminator, rebuilt) - target).pow(2).mean()
            loss = loss + self.feature_weight * feature
            out["feature"] = feature.detach()
        return {"loss": loss, **out}
