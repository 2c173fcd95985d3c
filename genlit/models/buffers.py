"""Keeping every DDP rank's buffers (batch-norm running statistics) equal to rank 0's.

DDP keeps the parameters equal by averaging gradients, and copies rank 0's buffers to the other
ranks at the start of each forward pass through the wrapped module. Inside a training step each
rank's own batches then update its running statistics, so after the step the ranks disagree:
an evaluation would draw each rank's share of the samples from a slightly different network,
and a checkpoint would keep only rank 0's. :func:`agree_buffers` copies rank 0's buffers to
every rank; genlit calls it before every evaluation and every checkpoint.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def distributed() -> bool:
    """Whether this process is one of several DDP ranks."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def agree_buffers(module: nn.Module) -> None:
    """Copies rank 0's buffers into every rank's ``module`` (in place); nothing outside DDP.

    A collective: under DDP every rank must call it, at the same point.
    """
    if not distributed():
        return
    for buffer in module.buffers():
        if buffer.is_cuda and torch.distributed.get_backend() == "gloo":  # gloo broadcasts CPU tensors only
            host = buffer.cpu()
            torch.distributed.broadcast(host, src=0)
            buffer.copy_(host)
        else:
            torch.distributed.broadcast(buffer.data, src=0)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of named tensors' names, dtypes, shapes and bytes (to compare across ranks)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
