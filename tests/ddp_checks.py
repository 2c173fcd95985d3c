"""What tests/ddp_launch.py checks on every rank of a DDP fit.

:class:`RanksAgree` is an evaluation callback on genlit's schedule (every 2 generator steps and on
the final weights): at each evaluation point it gathers every rank's digest of the model's
parameters and buffers, as the FID callback would see them. After the fit
:func:`final_digests` compares the ranks and the ``last.ckpt`` rank 0 wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from genlit.callbacks.schedule import EvaluationSchedule, ScheduledEvaluation
from genlit.models.buffers import digest


def _ot_digest(ot: Any) -> str:
    """The digest of an OT map's codes and heights (AE-OT's models); ``none`` without one."""
    return "none" if ot is None else digest({"points": ot.points, "heights": ot.heights})


def _digests(module: torch.nn.Module) -> tuple[str, str, str]:
    return (digest(dict(module.named_parameters())), digest(dict(module.named_buffers())),
            _ot_digest(getattr(module, "ot", None)))


def _gather(trainer: Trainer, value: Any) -> list[Any]:
    values: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(values, value)
    return values


class RanksAgree(ScheduledEvaluation):
    """Records, at every evaluation point, whether all ranks hold the same networks."""

    def __init__(self) -> None:
        self.schedule = EvaluationSchedule(every_n_epochs=1, every_n_steps=2)
        self.checked = 0
        self.differed: list[tuple[int, str]] = []

    def run(self, trainer: Trainer, pl_module: LightningModule, in_training: bool) -> None:
        self.schedule.mark(trainer)
        params, buffers, ots = zip(*_gather(trainer, _digests(pl_module)), strict=True)
        self.checked += 1
        if len(set(params)) > 1:
            self.differed.append((trainer.global_step, "parameters"))
        if len(set(buffers)) > 1:
            self.differed.append((trainer.global_step, "buffers"))
        if len(set(ots)) > 1:
            self.differed.append((trainer.global_step, "ot"))


def final_digests(trainer: Trainer) -> str:
    """One line for rank 0 to print: the ranks' and last.ckpt's agreement, and every
    :class:`RanksAgree` result (a collective: every rank calls it)."""
    module = trainer.lightning_module
    params, buffers, ots = zip(*_gather(trainer, _digests(module)), strict=True)
    checks = [c for c in trainer.callbacks if isinstance(c, RanksAgree)]
    saved = "none"
    callback = trainer.checkpoint_callback
    last = Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None
    if trainer.is_global_zero and last is not None and last.exists():
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        state = checkpoint["state_dict"]
        names = dict(module.named_parameters()), dict(module.named_buffers())
        saved_ot = checkpoint.get("genlit_ot")
        saved = str(
            digest({n: state[n] for n in names[0]}) == params[0]
            and digest({n: state[n] for n in names[1]}) == buffers[0]
            and _ot_digest(None if saved_ot is None else argparse.Namespace(**saved_ot)) == ots[0]
        )
    n_buffers = sum(1 for _ in module.buffers())
    return (
        f"params_same={len(set(params)) == 1} buffers_same={len(set(buffers)) == 1} "
        f"buffers={n_buffers} checkpoint_same={saved} ot={ots[0] != 'none'} ot_same={len(set(ots)) == 1} "
        f"evaluations={sum(c.checked for c in checks)} differed={[d for c in checks for d in c.differed]}"
    )
