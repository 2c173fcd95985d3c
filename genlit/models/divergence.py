"""The divergence guard: a NaN or infinite loss stops training with one line, before any checkpoint."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genlit.errors import TrainingDiverged


class DivergenceGuard:
    """Checks losses for NaN and infinity without stalling an accelerator.

    On a CPU every loss is checked at once (reading a CPU scalar costs about a microsecond); on
    an accelerator the checks are queued as device tensors and read by :meth:`flush`, which the
    model calls on logging steps and before every checkpoint, so no checkpoint is ever written
    after a non-finite loss.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, int, Tensor]] = []

    def check(self, name: str, value: Tensor | None, step: int, trainer: Any = None) -> None:
        """Checks (or queues the check of) loss ``name`` at optimizer step ``step``.

        Raises:
            TrainingDiverged: on a CPU, at once when the loss is not finite.
        """
        if value is None:
            return
        value = value.detach()
        if value.device.type == "cpu":
            finite = math.isfinite(value.item()) if value.numel() == 1 else bool(value.isfinite().all())
            if not finite:
                raise TrainingDiverged(divergence_message(trainer, name, step))
        else:
            self.pending.append((name, step, torch.isfinite(value).all()))

    def flush(self, trainer: Any = None) -> None:
        """Reads the queued checks.

        Raises:
            TrainingDiverged: naming the first loss that was not finite.
        """
        pending, self.pending = self.pending, []
        if not pending:
            return
        flags = torch.stack([ok for _, _, ok in pending]).cpu()
        if bool(flags.all()):
            return
        name, step, _ = pending[int((~flags).nonzero()[0])]
        raise TrainingDiverged(divergence_message(trainer, name, step))


def divergence_message(trainer: Any, name: str, step: int) -> str:
    """One line: which loss, at which step, the likely causes and the last good checkpoint."""
    precision = getattr(trainer, "precision", "32-true") if trainer is not None else "32-true"
    causes = "a learning rate too high for this model (lower the optimizers' lr)"
    if precision in ("16-mixed", "16-true", "bf16-mixed", "bf16-true"):
        causes += f" or {precision} precision (try --trainer.precision=32-true)"
    last = ""
    callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if path:
        last = f"; last good checkpoint: {path}"
    return f"training diverged: train/{name} is not finite at step {step}; likely cause: {causes}{last}"
