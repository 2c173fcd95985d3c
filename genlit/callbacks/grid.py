"""A grid of images drawn from the same noise every time, so progress reads frame by frame.

Also what every grid of genlit draws with: nearest-neighbour upscaling, a title band above the
grid (model, generator step, FID) and row labels in a margin left of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import make_grid, save_image

from genlit.callbacks._rng import seeded
from genlit.callbacks.images import EpochPictures, run_dir, send_image
from genlit.callbacks.schedule import generator_step

_MARGIN = 3  # pixels of white around the title and the row labels


def upscale(images: Tensor, scale: int) -> Tensor:
    """Images ``(N, C, H, W)`` enlarged ``scale`` times by nearest neighbour (pixels stay sharp)."""
    if scale == 1:
        return images
    return F.interpolate(images.float(), scale_factor=scale, mode="nearest")  # (N, C, H*s, W*s)


def _font(size: int | None = None) -> Any:
    from PIL import ImageFont

    if size is not None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: one bitmap font, one size
            pass
    return ImageFont.load_default()


def _wrap(parts: Sequence[str], font: Any, width: int) -> list[str]:
    """``parts`` joined by ", " into lines no wider than ``width`` (a part never splits)."""
    lines: list[str] = []
    for part in parts:
        joined = f"{lines[-1]}, {part}" if lines else part
        if lines and font.getlength(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def annotate(
    grid: Tensor,
    title: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    row_height: int = 0,
    padding: int = 2,
) -> Any:
    """A ``make_grid`` grid as a PIL image, with a title above it and labels left of its rows.

    Args:
        grid: ``(3, H, W)`` in [0, 1], as ``make_grid(..., normalize=True)`` returns it.
        title: Parts of the title (``"GAN"``, ``"generator step 400"``), joined by commas and
            wrapped at the commas to the grid's width, on a white band above it.
        row_labels: One label per row of the grid, drawn in a white margin left of it.
        row_height: Height of one image of the grid (without padding), for the labels.
        padding: The grid's padding.
    """
    from PIL import Image, ImageDraw

    # The pixels save_image would write, so an annotated grid holds the same grid.
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8)
    picture = Image.fromarray(array.numpy())  # (H, W, 3)
    label_font = _font(max(6, min(10, row_height)))
    left = 0
    if row_labels:
        left = int(max(label_font.getlength(label) for label in row_labels)) + 2 * _MARGIN
    font = _font()
    lines = _wrap(title, font, left + picture.width - 2 * _MARGIN) if title else []
    top, bottom = font.getbbox("Ag")[1::2]
    line_height = bottom - top + 2
    band = len(lines) * line_height + 2 * _MARGIN if lines else 0
    widest = max((int(font.getlength(line)) for line in lines), default=0) + 2 * _MARGIN
    canvas = Image.new("RGB", (max(left + picture.width, widest), band + picture.height), "white")
    canvas.paste(picture, (left, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + i * line_height - top), line, fill="black", font=font)
    for row, label in enumerate(row_labels):
        label_top, label_bottom = label_font.getbbox(label)[1::2]
        row_top = band + padding + row * (row_height + padding)
        y = row_top + (row_height - label_bottom - label_top) // 2  # centred on the row
        draw.text((_MARGIN, y), label, fill="black", font=label_font)
    return canvas


def save_grid(
    grid: Tensor,
    path: Path,
    title: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    row_height: int = 0,
) -> None:
    """Writes a ``make_grid`` grid as a PNG: exactly ``save_image``'s file without annotations."""
    if not title and not row_labels:
        save_image(grid, path)
        return
    annotate(grid, title, row_labels, row_height).save(path)


class RunTitle:
    """The title of a run's pictures: the model class, the generator step, the last ``val/fid``.

    ``trainer.callback_metrics`` keeps ``val/fid`` until the next measurement, so the title
    tells the step it was measured at when that is not the picture's: :meth:`note` (called
    after each validation and at each picture) records the generator step at which a new value
    first appears.
    """

    def __init__(self) -> None:
        self._fid: tuple[float, int] | None = None

    def note(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = trainer.callback_metrics.get("val/fid")
        if value is not None and (self._fid is None or self._fid[0] != float(value)):
            self._fid = (float(value), generator_step(trainer, pl_module))

    def parts(self, trainer: Trainer, pl_module: LightningModule) -> list[str]:
        self.note(trainer, pl_module)
        step = generator_step(trainer, pl_module)
        parts = [type(pl_module).__name__, f"generator step {step}"]
        if self._fid is not None:
            value, at = self._fid
            parts.append(f"FID {value:.4g}" + ("" if at == step else f" (at step {at})"))
        return parts


class SampleGrid(EpochPictures):
    """Saves a grid of model samples as ``samples/grid_step_XXXXXX.png`` (by generator step) every few epochs.

    The noise is the same at every grid: sampling runs under a forked RNG seeded with ``seed``,
    so the grids differ only because the weights changed, and the global RNG state (hence the
    training run itself) is exactly what it would be without this callback. Only
    ``pl_module.sample(n)`` is used, so any ``GenerativeModel`` gets grids. Samples must be
    images ``(N, C, H, W)`` in [-1, 1]; for other samples (2-D toy points) the callback warns
    once and does nothing. The file lies under the run directory and goes to the logger too
    when it takes images (key ``samples/grid``).

    Args:
        num_samples: Images per grid.
        nrow: Images per row of the grid.
        every_n_epochs: Draw at the end of every n-th training epoch; a last grid is drawn at
            the end of fit when the final weights have none yet.
        seed: Seed of the fixed noise.
        scale: Enlarge each image this many times (nearest neighbour): 16x16 digits are
            hard to read at 1.
        title: Write the model class, the generator step and the last ``val/fid`` (when an
            FID callback logs it) on a white band above the grid.
    """

    def __init__(
        self,
        num_samples: int = 64,
        nrow: int = 8,
        every_n_epochs: int = 1,
        seed: int = 0,
        scale: int = 1,
        title: bool = False,
    ) -> None:
        if num_samples < 1 or nrow < 1 or every_n_epochs < 1 or scale < 1:
            raise ValueError(
                "SampleGrid needs num_samples >= 1, nrow >= 1, every_n_epochs >= 1 and scale >= 1"
            )
        self.num_samples = num_samples
        self.nrow = nrow
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.scale = scale
        self.title = title
        self._title = RunTitle()
        self.last_path: Path | None = None
        self._not_images = False
        self._drawn_at_step: int | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._title.note(trainer, pl_module)

    def fixed_samples(self, pl_module: LightningModule) -> Tensor:
        """``pl_module.sample(num_samples)`` from the seeded noise, leaving the global RNG as it was.

        Args:
            pl_module: The model; it must implement ``sample(n)``.
        """
        with seeded(pl_module.device, self.seed):
            return pl_module.sample(self.num_samples)

    def draw(
        self, trainer: Trainer, pl_module: LightningModule, step: int | None = None
    ) -> Path | None:
        """Saves and sends one grid now; returns its path, or ``None`` when nothing was drawn.

        Args:
            trainer: The trainer, for the run directory, the step and the loggers.
            pl_module: The model to sample from.
            step: Generator step in the file name; the model's current one by default.
        """
        if trainer.sanity_checking or not trainer.is_global_zero or self._not_images:
            return None
        images = self.fixed_samples(pl_module)
        if images.dim() != 4:
            self._not_images = True
            rank_zero_warn(
                f"SampleGrid: {type(pl_module).__name__}.sample returns shape "
                f"{tuple(images.shape)}, not images (N, C, H, W); no grids will be drawn."
            )
            return None
        grid = make_grid(
            upscale(images.detach().float().cpu(), self.scale),
            nrow=self.nrow,
            padding=2,
            normalize=True,
            value_range=(-1, 1),
        )  # (3, rows * (H * scale + 2) + 2, min(nrow, N) * (W * scale + 2) + 2)
        step = generator_step(trainer, pl_module) if step is None else step
        path = run_dir(trainer) / "samples" / f"grid_step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(grid, path, self._title.parts(trainer, pl_module) if self.title else ())
        self.last_path = path
        self._drawn_at_step = trainer.global_step
        send_image(trainer, "samples/grid", path)
        return path


def save_neighbours(
    samples: Tensor,
    neighbours: Tensor,
    ratios: Tensor,
    path: Path,
    title: Sequence[str] = (),
    per_row: int = 8,
) -> Path:
    """Writes samples above their nearest training images, row pair by row pair, as a PNG.

    Args:
        samples: uint8 images ``(n, C, H, W)``.
        neighbours: The nearest training image of each, uint8 ``(n, C, H, W)``.
        ratios: Each sample's distance to it over the held-out images' median distance to
            the training set ``(n,)``: the row labels give their median (1: as far as real
            held-out images are; near 0: a copy).
        path: The PNG to write (its folder is made).
        title: Parts of the title.
        per_row: Images per row.
    """
    rows, labels = [], []
    for start in range(0, len(samples), per_row):
        part = slice(start, start + per_row)
        rows += [samples[part], neighbours[part]]
        labels += ["samples", f"nearest training, d/held-out {float(ratios[part].median()):.2f}"]
    width = min(per_row, len(samples))
    padded = [torch.cat([r, r.new_zeros(width - len(r), *r.shape[1:])]) if len(r) < width else r for r in rows]
    images = torch.cat(padded).float() / 255.0  # (2 rows x width, C, H, W)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    grid = make_grid(images, nrow=width, padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    annotate(grid, title, labels, samples.shape[-2]).save(path)
    return path
