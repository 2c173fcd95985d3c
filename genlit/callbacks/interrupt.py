"""Ctrl-C or SIGTERM during ``fit``: finish the current step, save a resumable checkpoint, stop."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genlit.callbacks.images import run_dir


def checkpoint_dir(trainer: Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else ``<run>/checkpoints``."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) if dirpath else run_dir(trainer) / "checkpoints"


class ResumeOnInterrupt(Callback):
    """Turns an interrupt into a clean stop with a checkpoint that ``--ckpt_path last`` resumes.

    SIGTERM (a scheduler's pre-emption, ``kill``) is caught by Lightning, which stops at the
    end of the current training batch; the first Ctrl-C is routed the same way (a second one
    aborts at once). Either way the state after the last whole step, both networks, optimizers,
    counters, random states and data position included, is saved as ``last.ckpt`` in the
    run's checkpoint folder. ``genlit fit`` adds this callback by itself.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self.saved: Path | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
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

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        if trainer.state.fn != "fit":
            return
        path = checkpoint_dir(trainer) / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        rank_zero_info(
            f"genlit: interrupted at global step {trainer.global_step}; saved {path}; "
            "resume with the same command plus --ckpt_path last"
        )
