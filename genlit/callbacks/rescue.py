"""When something other than training fails mid-run, the trained weights are saved first.

An evaluation, a logger or a callback that fails after hours of training must not take the
weights with it. :func:`failing_part` tells such a failure from one of training itself (the
step, its backward, the optimizer: weights possibly half-updated, never saved); the run's
``ResumeOnInterrupt`` then saves ``last.ckpt`` and marks the exception with
:func:`mark`, so ``genlit fit`` ends with one line saying what failed and where the weights are.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.loggers import Logger

_TRAINING = {"training_step", "manual_backward", "backward", "optimizer_step", "run_phase", "step_optimizer"}


def failing_part(exception: BaseException) -> str | None:
    """``"callback FID"``, ``"logger WandbLogger"``, ``"validation"`` or ``"GAN.on_train_end"``
    for a failure outside training; ``None`` when training itself failed."""
    frames: list[Any] = []
    tb: TracebackType | None = exception.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    part = None
    for frame in frames:  # outermost first: the first genlit-visible part that called inward
        owner = frame.f_locals.get("self")
        name = frame.f_code.co_name
        if isinstance(owner, LightningModule) and name in _TRAINING:
            return None
        if part is not None:
            continue
        if isinstance(owner, Logger):
            part = f"logger {type(owner).__name__}"
        elif isinstance(owner, Callback):
            part = f"callback {type(owner).__name__}"
        elif isinstance(owner, LightningModule) and name.startswith(("on_", "validation_", "test_")):
            part = f"{type(owner).__name__}.{name}"
    return part


def mark(exception: BaseException, part: str, step: int, saved: str | None, why_not: str = "") -> None:
    """Records on ``exception`` what failed and where the weights were saved (for the CLI's line)."""
    exception.genlit_rescue = {"part": part, "step": step, "saved": saved, "why_not": why_not}  # type: ignore[attr-defined]


def rescue_line(exception: BaseException) -> str | None:
    """The one line ``genlit fit`` ends with after a marked failure, or ``None``."""
    rescue = getattr(exception, "genlit_rescue", None)
    if rescue is None:
        return None
    reason = str(exception).strip().splitlines()[0] if str(exception).strip() else ""
    what = f"{type(exception).__name__}: {reason}" if reason else type(exception).__name__
    head = f"{rescue['part']} failed at generator step {rescue['step']} ({what})"
    if rescue["saved"]:
        return (f"{head}; the trained weights are saved in {rescue['saved']}: fix the cause and "
                "resume with the same command plus --ckpt_path last (GENLIT_DEBUG=1 shows the traceback)")
    return f"{head}; no checkpoint was written ({rescue['why_not']}) (GENLIT_DEBUG=1 shows the traceback)"
