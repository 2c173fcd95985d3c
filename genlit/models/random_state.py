"""Every random stream a training step draws from, saved in checkpoints for an exact resume.

Stored as tensors and plain tuples only, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The state of torch (CPU and CUDA), NumPy and Python's ``random``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Puts back a state from :func:`capture`."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_all_ranks(world_size: int) -> dict[str, Any]:
    """This process's state, or under DDP every rank's (Lightning writes rank 0's dict only).

    A collective: under DDP every rank must call it.
    """
    state = capture()
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        states: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(states, state)
        return {"per_rank": states}
    return state


def for_rank(saved: dict[str, Any] | None, rank: int) -> dict[str, Any] | None:
    """The state this rank should continue with; ``None`` (fresh streams) for another world size."""
    if saved is None or "per_rank" not in saved:
        return saved
    states = saved["per_rank"]
    return states[rank] if rank < len(states) else None


def offset_for_rank(rank: int) -> None:
    """Shifts torch's stream by rank: ranks seeded alike start with equal weights, not equal noise."""
    torch.manual_seed((torch.initial_seed() + 104_729 * rank) % 2**63)
