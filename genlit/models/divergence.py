"""The divergence guard: a NaN or infinite loss, non-finite weights or non-finite samples stop
training with one line, before any checkpoint is written."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlit.errors import TrainingDiverged
from genlit.models import random_state


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

    def check_model(self, model: Any, trainer: Any = None) -> None:
        """Checks the weights, and a few samples, before a checkpoint of ``model`` is written.

        A learning rate far too high can leave finite losses and finite, huge weights from
        which every sample is NaN: the losses alone would call such a checkpoint good. Under
        DDP the ranks decide together (their samples differ), so all stop or none does.

        Raises:
            TrainingDiverged: saying what is not finite; nothing is written.
        """
        problem = model_problem(model)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and getattr(trainer, "world_size", 1) > 1:
            if strategy.reduce_boolean_decision(problem is None, all=True) and problem is None:
                return
            problem = problem or "another rank's samples are not finite"
        if problem is not None:
            step = trainer.global_step if trainer is not None else 0
            raise TrainingDiverged(divergence_message(trainer, "", step, problem))

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


def nonfinite_tensors(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [
        name for name, t in named
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def name_some(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 5 more``: the first few of a list of tensor names."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{', '.join(names[:shown])}{more}"


def largest_weight(named: Iterable[tuple[str, Tensor]]) -> float:
    """The largest finite magnitude among floating-point tensors (0 for none)."""
    largest = 0.0
    for _, t in named:
        if isinstance(t, Tensor) and t.is_floating_point() and t.numel():
            finite = t.detach()[torch.isfinite(t.detach())]
            if finite.numel():
                largest = max(largest, float(finite.abs().max()))
    return largest


def samples_are_finite(sample: Callable[[int], Tensor], n: int = 8) -> bool:
    """Whether ``n`` samples are finite, drawn without moving any random stream."""
    streams = random_state.capture()
    try:
        return bool(torch.isfinite(sample(n)).all())
    finally:
        random_state.restore(streams)


def model_problem(model: Any, n: int = 8) -> str | None:
    """What makes a model's state unusable, or ``None``: non-finite weights or buffers, or (for a
    model that can ``sample``) non-finite samples from finite weights."""
    state = list(model.state_dict().items())
    bad = nonfinite_tensors(state)
    if bad:
        return f"the weights are not finite ({name_some(bad)})"
    sample = getattr(model, "sample", None)
    if callable(sample):
        try:
            finite = samples_are_finite(sample, n)
        except NotImplementedError:
            return None
        if not finite:
            return f"samples drawn from the weights are not finite (largest weight {largest_weight(state):.3g})"
    return None


def last_good_checkpoint(trainer: Any) -> str:
    """The newest checkpoint of this run still on disk: each was checked before it was written."""
    if trainer is None:
        return ""
    candidates: list[str] = []
    for callback in getattr(trainer, "checkpoint_callbacks", []) or []:
        candidates += [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    for callback in getattr(trainer, "callbacks", []) or []:
        saved = getattr(callback, "saved", None)
        if isinstance(saved, Path):
            candidates.append(str(saved))
    existing = [Path(c) for c in candidates if c and Path(c).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else ""


def divergence_message(trainer: Any, name: str, step: int, what: str | None = None) -> str:
    """One line: which loss (or ``what`` else), at which step, the likely causes and the last
    good checkpoint."""
    precision = getattr(trainer, "precision", "32-true") if trainer is not None else "32-true"
    causes = "a learning rate too high for this model (lower the optimizers' lr)"
    if precision in ("16-mixed", "16-true", "bf16-mixed", "bf16-true"):
        causes += f" or {precision} precision (try --trainer.precision=32-true)"
    path = last_good_checkpoint(trainer)
    last = f"; last good checkpoint: {path}" if path else "; no checkpoint of this run was written"
    what = what or f"train/{name} is not finite"
    return f"training diverged: {what} at step {step}; likely cause: {causes}{last}"
