"""The batch convention every part of genlit reads: the data is ``x``, ``(x, ...)`` or ``{"x": ...}``."""

from __future__ import annotations

from torch import Tensor


def batch_data(batch: Tensor | tuple | list | dict) -> Tensor:
    """The data tensor of a batch: ``x`` itself, the first element of ``(x, y)``, or ``batch["x"]``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["x"]
    return batch[0]
