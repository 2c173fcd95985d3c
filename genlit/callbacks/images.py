"""Where pictures go: a PNG under the run directory, and whichever logger takes images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from genlit import _compat


def run_dir(trainer: Trainer) -> Path:
    """The directory of the current run: the logger's version folder, or the trainer's root.

    Same answer as ``trainer.log_dir`` without its broadcast, so rank-zero-only code under DDP
    can call it (a collective on one rank would hang), except for genlit's ``WandbLogger``:
    ``trainer.log_dir`` is then the ``save_dir`` shared by all runs, this its run's own folder.
    """
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    folder = getattr(logger, "log_dir", None) or logger.save_dir
    return Path(folder or trainer.default_root_dir)


def send_image(trainer: Trainer, key: str, path: Path) -> None:
    """Sends the PNG at ``path`` to every logger that takes images, under ``key``.

    A tracker failure never stops training: it becomes a warning.
    """
    # The x-axis Lightning logs metrics against: batches, not optimizer steps (a GAN makes
    # k + 1 optimizer steps per generator step), so pictures line up with the losses.
    step = _compat.logged_step(trainer)
    image: np.ndarray | None = None
    for logger in trainer.loggers:
        try:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], step=step)
            elif isinstance(logger, TensorBoardLogger):
                if image is None:
                    from PIL import Image

                    image = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)
                logger.experiment.add_image(key, image, step, dataformats="HWC")
        except Exception as err:  # noqa: BLE001 - the tracker must never end a run
            rank_zero_warn(f"could not send {key} to {type(logger).__name__}: {err}")


class EpochPictures(Callback):
    """Draws a picture at the end of every ``every_n_epochs``-th training epoch and of fit.

    The training epoch ends whether or not there is a validation split, so pictures do not
    depend on ``check_val_every_n_epoch``. Subclasses implement ``draw(trainer, pl_module)``
    (files named by generator step) and set ``every_n_epochs`` and ``_drawn_at_step`` (the
    global step of the last picture).
    """

    every_n_epochs: int
    _drawn_at_step: int | None

    def draw(self, trainer: Trainer, pl_module: LightningModule, step: int | None = None) -> Path | None:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A fast_dev_run has no run folder (no logger): it would draw into the current directory.
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.fast_dev_run:
            self.draw(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._drawn_at_step != trainer.global_step and not trainer.fast_dev_run:
            self.draw(trainer, pl_module)
