"""The in-memory image path: uint8 tensors resident on the device, batches gathered by index.

A small dataset (MNIST's 47 MB, CIFAR-10's 150 MB) fits on any accelerator many times over, and
decoding PIL images sample by sample costs more than a small generator's training step. So the
split is decoded once into one uint8 tensor, the DataLoader yields only index tensors, and the
datamodule's ``on_after_batch_transfer`` hook gathers the images on the device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class IndexBatch(NamedTuple):
    """A batch of positions into one source split's resident tensor.

    The source travels with the indices because a validation split is carved out of the
    training tensor, so the hook cannot tell the tensor to gather from by the trainer's stage.

    Attributes:
        source: Which resident tensor the indices point into: ``"train"`` or ``"test"``.
        indices: Positions into that tensor, shape (B,), int64.
    """

    source: str
    indices: Tensor


class IndexDataset(Dataset):
    """Map-style dataset of positions, so Lightning can still shard it with a DistributedSampler.

    Args:
        source: The resident tensor these positions index, carried into every batch.
        indices: Positions of this split's samples in the source tensor, shape (N,).
    """

    def __init__(self, source: str, indices: Tensor) -> None:
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Tensor:
        return self.indices[position]

    def __getitems__(self, positions: list[int]) -> IndexBatch:
        # One advanced-indexing call per batch instead of B __getitem__ calls and a collate.
        return IndexBatch(self.source, self.indices[positions])


def keep_batch(batch: IndexBatch) -> IndexBatch:
    """Collate function for :class:`IndexDataset`: ``__getitems__`` already built the batch."""
    return batch


def decode_uint8(
    dataset: Dataset, num_workers: int = 0, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Decodes a dataset whose transform yields uint8 (C, H, W) tensors into two stacked tensors.

    Args:
        dataset: Yields ``(image, label)`` with ``image`` a uint8 tensor of fixed shape.
        num_workers: DataLoader workers for the one-off decode (JPEG folders profit).
        batch_size: Samples per decode batch; only affects peak memory and speed.

    Returns:
        ``(images, labels)``: uint8 (N, C, H, W) and int64 (N,).
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(torch.as_tensor(y, dtype=torch.int64).reshape(-1))
    return torch.cat(images), torch.cat(labels)


class DeviceCache:
    """Holds each source split on the CPU and lazily copies it, once, to each device that asks.

    Args:
        splits: ``{source: (images uint8 (N, C, H, W), labels int64 (N,))}`` on the CPU.
    """

    def __init__(self, splits: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        self.cpu: dict[str, tuple[Tensor, Tensor]] = dict(splits or {})
        self._copies: dict[tuple[str, torch.device], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def __contains__(self, source: str) -> bool:
        return source in self.cpu

    def add(self, source: str, images: Tensor, labels: Tensor) -> None:
        """Registers a source split; stale device copies of it are dropped."""
        self.cpu[source] = (images, labels)
        self._copies = {k: v for k, v in self._copies.items() if k[0] != source}

    def gather(self, source: str, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Returns float images in [-1, 1] and labels at ``indices``, on ``indices.device``.

        Args:
            source: A registered source split.
            indices: int64 positions, shape (B,); their device picks the copy used.

        Returns:
            ``(images, labels)``: float32 (B, C, H, W) in [-1, 1] and int64 (B,).
        """
        key = (source, indices.device)
        if key not in self._copies:
            if source not in self.cpu:
                raise KeyError(f"split {source!r} is not loaded; call setup() first")
            images, labels = self.cpu[source]
            device = indices.device
            minus_one, half_range = torch.tensor([-1.0, 127.5], device=device).unbind()
            self._copies[key] = (images.to(device), labels.to(device), minus_one, half_range)
        images, labels, minus_one, half_range = self._copies[key]
        # Converting after the gather touches B images, not N. One fused kernel, -1 + x / 127.5,
        # casts and scales (equal to Normalize(0.5, 0.5)(ToTensor(x)) up to float rounding, and
        # exactly -1 and 1 at 0 and 255): each kernel launch, or thread-pool wake-up on a CPU,
        # costs as much as the arithmetic here.
        selected = images.index_select(0, indices)  # (B, C, H, W) uint8
        real = torch.addcdiv(minus_one, selected, half_range)  # (B, C, H, W) float32
        return real, labels.index_select(0, indices)

    def release_devices(self) -> None:
        """Drops the device copies (frees accelerator memory); the CPU tensors stay."""
        self._copies.clear()
