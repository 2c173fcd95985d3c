"""A ``last.ckpt`` that ``--ckpt_path last`` resumes: at the end of every fit, and on an interrupt.

Ctrl-C or SIGTERM during ``fit`` finish the current step, save the checkpoint and stop.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genlit import _compat
from genlit.callbacks.images import run_dir
from genlit.callbacks.rescue import failing_part, mark
from genlit.callbacks.schedule import finish_training, generator_step
from genlit.errors import TrainingDiverged


def checkpoint_dir(trainer: Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else ``<run>/checkpoints``."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) if dirpath else run_dir(trainer) / "checkpoints"


def _last_path(trainer: Trainer, why: str) -> Path | None:
    """``<checkpoint dir>/last.ckpt``, or ``None`` (with one line saying so) where none belongs."""
    if trainer.fast_dev_run:  # a check of the code, not a run: Lightning writes nothing either
        return None
    if trainer.logger is None and trainer.checkpoint_callback is None:
        # Without both, the folder would be the trainer's root: by default the current directory.
        rank_zero_info(
            f"genlit: {why}; no checkpoint folder (no logger, no ModelCheckpoint): "
            "no last.ckpt written"
        )
        return None
    return checkpoint_dir(trainer) / "last.ckpt"


def _keeping_last_in(trainer: Trainer, folder: Path) -> list[ModelCheckpoint]:
    """The ``save_last`` ModelCheckpoints that write into ``folder``."""
    return [
        c
        for c in trainer.checkpoint_callbacks
        if isinstance(c, ModelCheckpoint)
        and c.save_last
        and c.dirpath
        and Path(c.dirpath).absolute() == folder.absolute()
    ]


def _holds_step(trainer: Trainer, path: Path) -> bool:
    """Whether a ModelCheckpoint of this fit wrote ``path`` last, at the current global step."""
    written = [c for c in _keeping_last_in(trainer, path.parent) if c.last_model_path]
    if not any(Path(c.last_model_path).absolute() == path.absolute() for c in written):
        return False
    if not trainer.is_global_zero:  # rank zero wrote the file: its answer is broadcast
        return False
    try:
        # mmap: only the few bytes of the counter are read, however large the networks.
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable (a weights-only file too): write a fresh one
        return False
    return saved.get("global_step") == trainer.global_step and "loops" in saved


class ResumeOnInterrupt(Callback):
    """Leaves a ``last.ckpt`` for ``--ckpt_path last``: at the end of every fit, on an interrupt.

    * A fit that ends normally (its budget spent, or stopped early) saves the state after its
      final step as ``last.ckpt`` in the run's checkpoint folder, unless a ``ModelCheckpoint``
      already wrote that file at that step (``save_last``): configs whose checkpoints are tied
      to validation epochs, or that keep no ``last.ckpt``, end with one all the same. It is
      saved at the end of the last training epoch, where ``ModelCheckpoint`` saves too: a
      checkpoint taken after the fit loop has closed its epoch would resume one epoch on
      (other data, other counters). Only a stop decided later than that (``EarlyStopping``
      on training-epoch metrics, ``max_time``) is saved at the end of training.
    * SIGTERM (a scheduler's pre-emption, ``kill``) is caught by Lightning, which stops at the
      end of the current training batch; the first Ctrl-C is routed the same way (a second
      one aborts at once). The state after the last whole step is saved as ``last.ckpt``.

    Either checkpoint holds both networks, optimizers, counters, random states and data
    position. Nothing is written under ``fast_dev_run``, nor without a logger and a
    ``ModelCheckpoint`` (the folder would be the current directory). Under DDP every rank
    takes part in the save. ``genlit fit`` adds this callback by itself.

    Attributes:
        saved: The ``last.ckpt`` this callback wrote last, ``None`` before it wrote any.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self.saved: Path | None = None
        self._saved_at: int | None = None  # the global step of the end-of-fit checkpoint

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._saved_at = None
        if threading.current_thread() is not threading.main_thread():
            return

        def first_ctrl_c(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts
            sys.stderr.write(
                "\ngenlit: stopping after this step and saving a checkpoint (Ctrl-C again aborts)\n"
            )
            # Handled as the SIGTERM it now is: Lightning's handler stops after the batch.
            signal.raise_signal(signal.SIGTERM)

        self._previous = signal.signal(signal.SIGINT, first_ctrl_c)

    def _restore_handler(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fit_loop.done:  # the fit ends with this epoch
            self._save_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._saved_at != trainer.global_step:  # a stop decided after the epoch's end
            self._save_last(trainer)

    def _save_last(self, trainer: Trainer) -> None:
        self._saved_at = trainer.global_step
        finish_training(trainer.lightning_module)  # the final checkpoint holds the finished model
        path = _last_path(trainer, "fit finished")
        if path is None or trainer.strategy.broadcast(_holds_step(trainer, path)):
            return
        trainer.save_checkpoint(path, weights_only=False)  # a collective under DDP: every rank calls it
        self.saved = path
        for callback in _keeping_last_in(trainer, path.parent):
            # Its own save at this epoch's end (it runs after this callback) then replaces the
            # file instead of writing last-v1.ckpt next to it.
            callback.last_model_path = str(path)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handler()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()
        if trainer.state.fn != "fit":
            return
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._rescue(trainer, exception)
            return
        path = _last_path(trainer, f"interrupted at global step {trainer.global_step}")
        if path is None:
            return
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
        rank_zero_info(
            f"genlit: interrupted at global step {trainer.global_step}; saved {path}; "
            "resume with the same command plus --ckpt_path last"
        )

    def _rescue(self, trainer: Trainer, exception: BaseException) -> None:
        """Saves the trained weights when an evaluation, a logger or a callback failed."""
        part = failing_part(exception)
        if part is None or isinstance(exception, TrainingDiverged):
            return  # training itself failed (or nothing was trained): its weights are not saved
        step = generator_step(trainer, trainer.lightning_module)
        if trainer.global_step == 0:
            return mark(exception, part, step, None, "nothing was trained yet")
        if trainer.world_size > 1:
            # Saving is a collective, and the other ranks may not know this one failed.
            return mark(exception, part, step, None, "under DDP only a clean stop saves")
        path = _last_path(trainer, f"{part} failed")
        if path is None:
            return mark(exception, part, step, None, "the run has no checkpoint folder")
        _compat.complete_batch_progress(trainer)  # the step itself is done: resume after it
        try:
            trainer.save_checkpoint(path, weights_only=False)
        except Exception as err:  # noqa: BLE001 - say why, keep the original failure
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return mark(exception, part, step, None, reason)
        self.saved = path
        mark(exception, part, step, str(path))
