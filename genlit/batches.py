"""The batch convention every part of genlit reads: the data is ``x``, ``(x, ...)`` or ``{"x": ...}``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor


def batch_data(batch: Tensor | tuple | list | dict) -> Tensor:
    """The data tensor of a batch: ``x`` itself, the first element of ``(x, y)``, or ``batch["x"]``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["x"]
    return batch[0]


_FULL_PASS = "_genlit_full_pass"


@contextmanager
def full_pass(trainer: Any) -> Iterator[None]:
    """Marks a pass over the training data that is not training: an ex-post fit at the epoch's end.

    Resumable datamodules skip the batches of the current epoch already trained (a mid-epoch
    resume continues where it stopped); inside this block they give every batch
    (:func:`in_full_pass`).
    """
    if trainer is None:
        yield
        return
    previous = getattr(trainer, _FULL_PASS, False)
    setattr(trainer, _FULL_PASS, True)
    try:
        yield
    finally:
        setattr(trainer, _FULL_PASS, previous)


def in_full_pass(trainer: Any) -> bool:
    """Whether a :func:`full_pass` over the training data is under way."""
    return bool(getattr(trainer, _FULL_PASS, False))
