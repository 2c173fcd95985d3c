"""Pictures of a model's latent space: a decoded grid over two latent directions, and
interpolation strips between pairs of samples.

The grid is Kingma and Welling's learned-manifold figure (2014, fig. 4), which the lecture
shows for the VAE: with a 2-D latent space, codes at the Gaussian quantiles of a regular grid
over (0, 1)^2 are decoded. Above two dimensions the grid spans the two leading principal
directions of the codes of held-out real images (models with an encoder), at the same quantiles of
their spread around the codes' mean; without an encoder (GANs, whose prior N(0, I) has no
leading direction) it spans the first two latent coordinates, the others at 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid

from genlit.callbacks._rng import seeded
from genlit.callbacks.grid import save_grid, upscale
from genlit.callbacks.images import EpochPictures, run_dir, send_image
from genlit.callbacks.schedule import generator_step

__all__ = ["LatentPictures", "latent_interface", "latent_plane", "interpolate"]


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode and no gradients; each module's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def latent_interface(
    model: LightningModule,
) -> tuple[Callable[[Tensor], Tensor], Callable[[int], Tensor], Callable[[Tensor], Tensor] | None] | None:
    """``(decode, draw_codes, encode)`` of a genlit model, or ``None`` when it has no decoder.

    ``decode`` maps codes ``(B, d)`` to images, ``draw_codes(n)`` draws the codes ``sample``
    decodes (the prior, the ex-post Gaussian, the OT map, GLANN's mapper), ``encode`` maps
    images to codes (``None`` without an encoder).
    """
    encode = None
    if callable(getattr(model, "encode", None)):
        def encode(x: Tensor) -> Tensor:
            out = model.encode(x)
            return out[0] if isinstance(out, tuple) else out  # the mean of q(z|x)

    if callable(getattr(model, "decode", None)) and callable(getattr(model, "prior_codes", None)):
        return model.decode, model.prior_codes, encode  # the autoencoder family
    if callable(getattr(model, "generate", None)) and hasattr(model, "sampling_generator"):
        return (lambda z: model.generate(z, model.sampling_generator)), model.noise, encode
    if callable(getattr(model, "sample_codes", None)) and hasattr(model, "generator"):
        return model.generator, model.sample_codes, encode  # GLANN
    return None


def latent_plane(
    codes: Tensor | None, latent_dim: int, size: int, quantile: float = 0.05
) -> Tensor:
    """Codes on a ``size x size`` grid over a latent plane, row by row: ``(size * size, d)``.

    Args:
        codes: Codes of real images ``(N, d)``: the plane through their mean spanned by their
            two leading principal directions, scaled by their standard deviations along them.
            ``None``: the plane of the first two coordinates of N(0, I).
        latent_dim: d.
        size: Points per side.
        quantile: The grid runs over the Gaussian quantiles from ``quantile`` to ``1 - quantile``.
    """
    u = torch.linspace(quantile, 1 - quantile, size, dtype=torch.float64)
    steps = torch.distributions.Normal(0.0, 1.0).icdf(u)  # (size,)
    rows, cols = torch.meshgrid(-steps, steps, indexing="ij")  # top row: high second coordinate
    plane = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)  # (size^2, 2)
    if codes is None or latent_dim <= 2:
        out = torch.zeros(size * size, latent_dim, dtype=torch.float64)
        if codes is not None and latent_dim == 2:
            mean, std = codes.double().mean(0), codes.double().std(0)
            return (mean + plane * std).float()
        out[:, : min(2, latent_dim)] = plane[:, : min(2, latent_dim)]
        return out.float()
    codes = codes.double().cpu()
    mean = codes.mean(0)
    _, singular, directions = torch.linalg.svd(codes - mean, full_matrices=False)  # (k,), (k, d)
    std = singular[:2] / max(1, len(codes) - 1) ** 0.5
    return (mean + (plane * std) @ directions[:2]).float()


def interpolate(start: Tensor, end: Tensor, steps: int, mode: str = "linear") -> Tensor:
    """``steps`` codes from each ``start`` row to its ``end`` row: ``(pairs * steps, d)``.

    ``slerp`` follows the great circle (White 2016), which stays where a Gaussian prior puts
    its mass; ``linear`` the straight line.
    """
    t = torch.linspace(0, 1, steps, device=start.device, dtype=start.dtype).view(1, steps, 1)
    a, b = start[:, None], end[:, None]  # (P, 1, d)
    if mode == "slerp":
        cos = torch.nn.functional.cosine_similarity(start, end, dim=1).clamp(-1 + 1e-7, 1 - 1e-7)
        omega = cos.acos().view(-1, 1, 1)  # (P, 1, 1)
        path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    else:
        path = (1 - t) * a + t * b
    return path.reshape(-1, start.shape[1])  # (P * steps, d)


def _chain(first: Tensor, rest: Iterator[Tensor]) -> Iterator[Tensor]:
    yield first
    yield from rest


class LatentPictures(EpochPictures):
    """Saves ``latents/plane_step_XXXXXX.png`` and ``latents/interpolation_step_XXXXXX.png``.

    The plane is a grid of images decoded over two latent directions (see the module's text:
    the 2-D manifold of Kingma and Welling, or the two leading principal directions of the
    codes of real images); the interpolation strips decode ``steps`` codes between pairs of
    codes drawn as ``sample`` draws them, one pair per row. Every model with a decoder or a
    generator gets them (autoencoders, VAEs, WAEs, AE-OT, GANs, BEGAN, GLANN). Drawn from
    seeded noise (the same pairs each time), in eval mode, leaving training's random state as
    it was; the files lie under the run directory and go to the loggers that take images
    (``latents/plane``, ``latents/interpolation``).

    Args:
        size: Images per side of the plane.
        pairs: Interpolation strips (rows).
        steps: Images per strip, both ends included.
        interpolation: ``slerp`` (great circle, for Gaussian priors) or ``linear``.
        num_images: Real training images encoded for the principal directions.
        quantile: The plane spans the Gaussian quantiles ``quantile`` to ``1 - quantile``.
        every_n_epochs: Draw at the end of every n-th training epoch and of fit.
        seed: Seed of the pairs.
        scale: Enlarge each image this many times (nearest neighbour).
    """

    def __init__(
        self,
        size: int = 15,
        pairs: int = 8,
        steps: int = 10,
        interpolation: Literal["slerp", "linear"] = "slerp",
        num_images: int = 2000,
        quantile: float = 0.05,
        every_n_epochs: int = 1,
        seed: int = 0,
        scale: int = 1,
    ) -> None:
        if min(size, pairs, num_images, every_n_epochs, scale) < 1 or steps < 2:
            raise ValueError(
                "LatentPictures needs size, pairs, num_images, every_n_epochs, scale >= 1 and steps >= 2"
            )
        if not 0.0 < quantile < 0.5:
            raise ValueError(f"LatentPictures needs quantile in (0, 0.5), got {quantile}")
        if interpolation not in ("slerp", "linear"):
            raise ValueError(f"interpolation must be slerp or linear, got {interpolation!r}")
        self.size = size
        self.pairs = pairs
        self.steps = steps
        self.interpolation = interpolation
        self.num_images = num_images
        self.quantile = quantile
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.scale = scale
        self.last_paths: dict[str, Path] = {}
        self._drawn_at_step: int | None = None
        self._warned = False

    def real_codes(self, trainer: Trainer, encode: Callable[[Tensor], Tensor], device: torch.device) -> Tensor | None:
        """Codes of the first ``num_images`` held-out images in order: the test split, else the
        validation split (``None`` without either). The training loader is left alone: building
        it would touch the resumable shuffle."""
        from genlit.errors import GenlitError
        from genlit.metrics.fid import real_batches

        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return None
        codes, seen = [], 0
        try:
            batches = iter(real_batches(datamodule, "test", device))
            first = next(batches)
        except (GenlitError, ValueError, StopIteration):
            return None
        for batch in _chain(first, batches):
            images = batch.float() / 127.5 - 1.0
            codes.append(encode(images).float().reshape(len(images), -1))
            seen += len(images)
            if seen >= self.num_images:
                break
        return torch.cat(codes)[: self.num_images] if codes else None

    def pictures(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor] | None:
        """``{"plane": images, "interpolation": images}``, or ``None`` for a model without decoder."""
        interface = latent_interface(pl_module)
        if interface is None:
            if not self._warned:
                self._warned = True
                rank_zero_warn(f"LatentPictures: {type(pl_module).__name__} has no decoder or generator to draw from")
            return None
        decode, draw_codes, encode = interface
        dim = int(pl_module.latent_dim)
        with evaluating(pl_module), seeded(pl_module.device, self.seed):
            codes = None
            if encode is not None and dim > 2:
                codes = self.real_codes(trainer, encode, pl_module.device)
            plane = latent_plane(codes, dim, self.size, self.quantile).to(pl_module.device)
            ends = draw_codes(2 * self.pairs).float()  # (2 P, d)
            path = interpolate(ends[: self.pairs], ends[self.pairs :], self.steps, self.interpolation)
            return {"plane": decode(plane), "interpolation": decode(path.to(pl_module.device))}

    def draw(self, trainer: Trainer, pl_module: LightningModule, step: int | None = None) -> Path | None:
        """Saves and sends both pictures; returns the plane's path (``None`` when none was drawn)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return None
        images = self.pictures(trainer, pl_module)
        if images is None:
            return None
        step = generator_step(trainer, pl_module) if step is None else step
        folder = run_dir(trainer) / "latents"
        folder.mkdir(parents=True, exist_ok=True)
        dim = int(pl_module.latent_dim)
        titles = {
            "plane": f"latent plane ({'2-D latent' if dim == 2 else 'leading directions'}), step {step}",
            "interpolation": f"{self.interpolation} interpolation, step {step}",
        }
        for name, nrow in (("plane", self.size), ("interpolation", self.steps)):
            grid = make_grid(
                upscale(images[name].detach().float().cpu(), self.scale),
                nrow=nrow, padding=2, normalize=True, value_range=(-1, 1),
            )  # fmt: skip
            path = folder / f"{name}_step_{step:06d}.png"
            save_grid(grid, path, (type(pl_module).__name__, titles[name]))
            self.last_paths[name] = path
            send_image(trainer, f"latents/{name}", path)
        self._drawn_at_step = trainer.global_step
        return self.last_paths["plane"]
