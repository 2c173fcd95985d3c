"""A grid of images drawn from the same noise every time, so progress reads frame by frame."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid, save_image

from genlit.callbacks._rng import seeded
from genlit.callbacks.images import EpochPictures, run_dir, send_image


class SampleGrid(EpochPictures):
    """Saves a grid of model samples as ``samples/grid_epoch_XXXX.png`` every few epochs.

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
    """

    def __init__(
        self, num_samples: int = 64, nrow: int = 8, every_n_epochs: int = 1, seed: int = 0
    ) -> None:
        if num_samples < 1 or nrow < 1 or every_n_epochs < 1:
            raise ValueError("SampleGrid needs num_samples >= 1, nrow >= 1 and every_n_epochs >= 1")
        self.num_samples = num_samples
        self.nrow = nrow
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.last_path: Path | None = None
        self._not_images = False
        self._drawn_at_step: int | None = None

    def fixed_samples(self, pl_module: LightningModule) -> Tensor:
        """``pl_module.sample(num_samples)`` from the seeded noise, leaving the global RNG as it was.

        Args:
            pl_module: The model; it must implement ``sample(n)``.
        """
        with seeded(pl_module.device, self.seed):
            return pl_module.sample(self.num_samples)

    def draw(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int | None = None
    ) -> Path | None:
        """Saves and sends one grid now; returns its path, or ``None`` when nothing was drawn.

        Args:
            trainer: The trainer, for the run directory, the epoch and the loggers.
            pl_module: The model to sample from.
            epoch: Epoch in the file name; the trainer's current epoch by default.
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
            images.detach().float().cpu(),
            nrow=self.nrow,
            padding=2,
            normalize=True,
            value_range=(-1, 1),
        )  # (3, rows * (H + 2) + 2, min(nrow, N) * (W + 2) + 2)
        epoch = trainer.current_epoch if epoch is None else epoch
        path = run_dir(trainer) / "samples" / f"grid_epoch_{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        self.last_path = path
        self._drawn_at_step = trainer.global_step
        send_image(trainer, "samples/grid", path)
        return path
