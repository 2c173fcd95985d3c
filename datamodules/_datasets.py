"""torchvision-style datasets and file helpers that torchvision itself lacks."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image


def extract_idx(raw: Path, names: Sequence[str]) -> None:
    """Unzips ``<name>.gz`` next to itself for every extracted IDX file that is missing.

    torchvision reads only extracted files, and extracts ``.gz`` files only after checking
    their md5, which rejects any file but the originals. Extracting here lets real files,
    and files a test wrote, load through torchvision with download=False.
    """
    for name in names:
        target, packed = raw / name, raw / f"{name}.gz"
        if target.exists() or not packed.exists():
            continue
        # A private temporary file and an atomic rename: a crash leaves no truncated file that
        # torchvision would trust, and processes extracting at once do not interleave writes.
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            with gzip.open(packed, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class FlatImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder over a folder without class subfolders: one class, label 0."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        # The class "" makes make_dataset walk `directory` itself.
        return [""], {"": 0}


class DigitsDataset(torchvision.datasets.VisionDataset):
    """scikit-learn's 1,797 bundled 8x8 digits as a torchvision dataset of PIL images."""

    def __init__(self, transform: Any = None) -> None:
        from sklearn.datasets import load_digits  # scikit-learn is only needed here

        super().__init__(root=None, transform=transform)
        digits = load_digits()
        # The pixel counts run 0..16; stretching to 0..255 makes them ordinary 8-bit images.
        pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        self.data = torch.from_numpy(pixels)  # (1797, 8, 8)
        self.targets = torch.from_numpy(digits.target).long()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.data[index].numpy())
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
