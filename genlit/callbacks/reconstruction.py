"""A grid of fixed images above their reconstructions, to watch an autoencoder learn."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid

from genlit.callbacks.grid import RunTitle, save_grid, upscale
from genlit.callbacks.images import EpochPictures, run_dir, send_image
from genlit.callbacks.schedule import generator_step


class ReconstructionGrid(EpochPictures):
    """Saves ``reconstructions/recon_step_XXXXXX.png`` (by generator step): rows of inputs, each above its reconstructions.

    The inputs are the first ``num_images`` validation images (training images when there is
    no validation split), taken once, so every grid shows the same images. Only
    ``pl_module.reconstruct(x)`` is used; for a model without it the callback warns once and
    does nothing. The file lies under the run directory and goes to the logger too when it
    takes images (key ``samples/reconstructions``).

    Args:
        num_images: Images to reconstruct (fewer if the split is smaller).
        nrow: Images per row; each row of inputs is followed by its row of reconstructions.
        every_n_epochs: Draw at the end of every n-th training epoch; a last grid is drawn at
            the end of fit when the final weights have none yet.
        scale: Enlarge each image this many times (nearest neighbour).
        title: Write the model class and the generator step (and the last ``val/fid``, when
            an FID callback logs it) on a white band above the grid.
        labels: Label each row "input" or "output" in a white margin left of the grid.
    """

    def __init__(
        self,
        num_images: int = 32,
        nrow: int = 8,
        every_n_epochs: int = 1,
        scale: int = 1,
        title: bool = False,
        labels: bool = False,
    ) -> None:
        if num_images < 1 or nrow < 1 or every_n_epochs < 1 or scale < 1:
            raise ValueError(
                "ReconstructionGrid needs num_images >= 1, nrow >= 1, every_n_epochs >= 1 and "
                "scale >= 1"
            )
        self.num_images = num_images
        self.nrow = nrow
        self.every_n_epochs = every_n_epochs
        self.scale = scale
        self.title = title
        self.labels = labels
        self._title = RunTitle()
        self.last_path: Path | None = None
        self._inputs: Tensor | None = None
        self._disabled = False
        self._drawn_at_step: int | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._title.note(trainer, pl_module)

    def fixed_inputs(self, trainer: Trainer, pl_module: LightningModule) -> Tensor | None:
        """The first ``num_images`` images of the validation (else training) loader, cached."""
        if self._inputs is None:
            datamodule = trainer.datamodule
            if datamodule is not None:
                loader = datamodule.val_dataloader()
                if isinstance(loader, list) and not loader:  # validation switched off
                    loader = datamodule.train_dataloader()
            else:
                loader = trainer.val_dataloaders or trainer.train_dataloader
            if loader is None:
                return None
            images, count = [], 0
            for batch in loader:
                x = pl_module.unpack(pl_module.prepare_batch(batch))
                images.append(x[: self.num_images - count])
                count += len(images[-1])
                if count >= self.num_images:
                    break
            self._inputs = torch.cat(images) if images else None
        return self._inputs

    def draw(
        self, trainer: Trainer, pl_module: LightningModule, step: int | None = None
    ) -> Path | None:
        """Saves and sends one grid now; returns its path, or ``None`` when nothing was drawn.

        Args:
            trainer: The trainer, for the data, the run directory, the step and the loggers.
            pl_module: The model; it must implement ``reconstruct(x)``.
            step: Generator step in the file name; the model's current one by default.
        """
        if trainer.sanity_checking or not trainer.is_global_zero or self._disabled:
            return None
        if not callable(getattr(pl_module, "reconstruct", None)):
            self._disabled = True
            rank_zero_warn(
                f"ReconstructionGrid: {type(pl_module).__name__} has no reconstruct(x); no grids will be drawn."
            )
            return None
        inputs = self.fixed_inputs(trainer, pl_module)
        if inputs is None or inputs.dim() != 4:
            self._disabled = True
            rank_zero_warn(
                "ReconstructionGrid: the data are not images (N, C, H, W); no grids will be drawn."
            )
            return None
        inputs = inputs.to(pl_module.device)
        outputs = pl_module.reconstruct(inputs)  # (N, C, H, W)
        # Interleave row by row: nrow inputs, then the same nrow reconstructed.
        rows = [
            part
            for i in range(0, len(inputs), self.nrow)
            for part in (inputs[i : i + self.nrow], outputs[i : i + self.nrow])
        ]
        width = min(self.nrow, len(inputs))
        padded = [torch.cat([r, r.new_full((width - len(r), *r.shape[1:]), -1.0)]) for r in rows]
        tiles = upscale(torch.cat(padded).detach().float().cpu(), self.scale)  # (M, C, H*s, W*s)
        grid = make_grid(
            tiles, nrow=width, padding=2, normalize=True, value_range=(-1, 1)
        )  # (3, 2 * ceil(N / nrow) * (H * scale + 2) + 2, width * (W * scale + 2) + 2)
        step = generator_step(trainer, pl_module) if step is None else step
        path = run_dir(trainer) / "reconstructions" / f"recon_step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(
            grid,
            path,
            title=self._title.parts(trainer, pl_module) if self.title else (),
            row_labels=["input", "output"] * (len(rows) // 2) if self.labels else (),
            row_height=tiles.shape[-2],
        )
        self.last_path = path
        self._drawn_at_step = trainer.global_step
        send_image(trainer, "samples/reconstructions", path)
        return path
