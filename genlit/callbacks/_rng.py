"""Random streams of the evaluation callbacks, kept apart from training's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Runs the block from a fixed seed and gives the global RNG state back afterwards.

    Evaluations then draw the same noise every time (their numbers compare across epochs),
    and training continues with the stream it would have had without them (exact resume).
    """
    accelerated = device.type not in ("cpu", "meta")
    with torch.random.fork_rng(
        devices=[device] if accelerated else [], device_type=device.type if accelerated else None
    ):
        torch.random.default_generator.manual_seed(seed)
        if accelerated:
            torch.get_device_module(device.type).manual_seed(seed)
        yield
