"""Training order that a resumed run continues exactly where the interrupted one stopped.

The shuffle of every epoch is a function of ``(seed, epoch)`` alone, and after a mid-epoch
restore the batches already trained in that epoch are skipped: Lightning's own progress
counters (restored from the checkpoint) say how many. Together with the random states in the
checkpoint, ``fit --ckpt_path last`` then sees the same batches as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import DistributedSampler

from genlit.batches import in_full_pass


def batches_done(trainer: Any) -> int:
    """Batches of the current training epoch already trained: nonzero only on a mid-epoch resume
    (and never in a :func:`genlit.batches.full_pass`, such as an ex-post fit at the epoch's end)."""
    if trainer is None or not getattr(trainer, "training", False) or in_full_pass(trainer):
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffle, sharded over DDP ranks, that skips the batches already trained.

    A ``DistributedSampler`` (Lightning calls ``set_epoch`` and leaves it in place under DDP)
    built for the trainer's world size and rank, also when there is one process.

    Args:
        dataset: The map-style dataset to index.
        batch_size: Samples per batch, to turn skipped batches into skipped samples.
        trainer: The trainer whose progress tells the resume position (``None``: never skip).
        shuffle: Shuffle anew every epoch (training); ``False`` keeps the dataset's order.
        seed: Seed of the shuffle; epoch ``e`` uses ``seed + e``.
    """

    def __init__(
        self, dataset: Sized, batch_size: int, trainer: Any, shuffle: bool = True, seed: int = 0
    ) -> None:
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.trainer = trainer

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[batches_done(self.trainer) * self.batch_size :])
