"""torchvision-style datasets and file helpers that torchvision itself lacks."""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image


class DataError(ValueError):
    """Data on disk that cannot be used as it is (a damaged file, too few images): one line.

    ``python -m genlit`` prints ``genlit: error: <message>`` and exits with code 2.
    """

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises it as DataError("Caught DataError in DataLoader worker
        # process 0.\nOriginal Traceback ..."): keep the original one-line message.
        lines = str(message).strip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught DataError"):
            message = lines[-1].removeprefix(f"{type(self).__module__}.").removeprefix("DataError: ")
        super().__init__(message)


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


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
        # A temporary file of this process and an atomic rename: a crash leaves no truncated
        # file that torchvision would trust, and processes extracting at once do not interleave
        # writes. Mode 0o666 less the umask, as open(..., "wb") makes it: mkstemp's 0600 would
        # keep the extracted dataset from the other users of a shared data folder.
        fd, tmp = _create_beside(raw, f".{name}.")
        try:
            with gzip.open(packed, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise DataError(
                f"{packed} is truncated or damaged ({_reason(err)}): delete it and download it "
                "again (data.init_args.download: true), or copy a complete one there"
            ) from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _create_beside(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new file in ``folder`` opened for writing, with the umask's mode; its fd and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = folder / f"{prefix}{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder}")


def unreadable_images(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(path, reason)`` of every file PIL cannot identify or whose structure is damaged.

    One pass over the files' headers and chunks (``Image.verify``), no decoding: a garbage,
    empty or truncated PNG is found; a JPEG cut short in its pixel data only fails when it is
    decoded (then :func:`load_image` names it).
    """
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # noqa: BLE001 - PIL's format plugins raise many types
            bad.append((path, _reason(err)))
    return bad


def load_image(path: str) -> Image.Image:
    """torchvision's default loader (an RGB PIL image), naming the file when it cannot be read.

    Raises:
        DataError: the file and PIL's reason, with the fix.
    """
    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL's format plugins raise many types
        raise DataError(
            f"{path} is not a readable image ({_reason(err)}): delete or replace it, or set "
            "data.init_args.skip_unreadable: true to leave unreadable images out"
        ) from None


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
