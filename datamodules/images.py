"""Image LightningDataModules: MNIST, Fashion-MNIST, CIFAR-10, CelebA, image folders, digits.

Every module yields ``(images, labels)`` batches: images float32 (B, C, H, W) in [-1, 1] (the
range of a tanh generator), labels int64 (B,). Datasets come through torchvision's own classes,
so files a user already has in torchvision's layout are found where torchvision puts them.

Two loading paths share the same transforms, so they give the same pixels:

* ``in_memory=True`` (default for the small datasets): each split is decoded once at
  ``setup`` into a uint8 tensor (N, C, H, W), the DataLoader yields only index batches, and
  :meth:`ImageDataModule.on_after_batch_transfer` gathers and converts them on the device
  (see :mod:`datamodules._inmemory`). Lightning calls that hook when the datamodule is passed
  to the Trainer; outside a Trainer call it, or :meth:`ImageDataModule.gather`, yourself.
* ``in_memory=False``: a standard DataLoader over the torchvision dataset with
  ``ToTensor`` and ``Normalize(0.5, 0.5)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules._datasets import DigitsDataset, FlatImageFolder, extract_idx
from datamodules._image_base import ImageDataModule

__all__ = [
    "CIFAR10",
    "MNIST",
    "CelebA",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
]

# Everything a torchvision download can raise offline: URLError is an OSError, and torchvision
# wraps failed mirrors and a missing gdown in RuntimeError.
_LOAD_ERRORS = (OSError, RuntimeError)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded; the message says where to put it."""


# --- MNIST family ------------------------------------------------------------------------------


class _IDXDataModule(ImageDataModule):
    """MNIST-style IDX datasets read through a torchvision ``MNIST`` subclass."""

    torchvision_class: ClassVar[type[torchvision.datasets.MNIST]] = torchvision.datasets.MNIST
    native_channels = 1
    native_size = 28

    def _open(self, source: str, transform: Any) -> Dataset:
        cls = self.torchvision_class
        root = Path(self.root).expanduser().resolve()
        raw = root / cls.__name__ / "raw"
        packed = [name for name, _ in cls.resources]
        try:
            if raw.is_dir():
                extract_idx(raw, [name.removesuffix(".gz") for name in packed])
            return cls(
                str(root), train=source == "train", transform=transform, download=self.download
            )
        except _LOAD_ERRORS as err:
            raise DatasetNotFoundError(self._missing(raw, packed, err)) from None

    def _native(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        return dataset.data.unsqueeze(1), dataset.targets.long()  # (N, 1, 28, 28)


class MNIST(_IDXDataModule):
    """MNIST handwritten digits: 60,000 training and 10,000 test images, 28x28 grayscale.

    Files: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, extracted next
    to themselves on first use (torchvision reads the extracted files), so ``root`` must be
    writable.

    Args:
        root: Directory holding ``MNIST/raw``.
        download: Download the four files when missing (needs network access).
        image_size: Height and width of the returned images (resized from 28).
        batch_size: Images per batch.
        num_workers: DataLoader workers for ``in_memory=False``.
        val_fraction: Fraction of the training split held out for validation; 0 disables it.
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Keep the split as one uint8 tensor on the device and gather batches there.
    """

    dataset_name = "MNIST"
    torchvision_class = torchvision.datasets.MNIST

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        image_size: int = 28,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool = True,
    ) -> None:
        super().__init__(
            root, download, image_size, batch_size, num_workers, val_fraction, seed, in_memory
        )


class FashionMNIST(_IDXDataModule):
    """Fashion-MNIST clothing: 60,000 training and 10,000 test images, 28x28 grayscale.

    Files: ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``,
    extracted next to themselves on first use, so ``root`` must be writable.

    Args:
        root: Directory holding ``FashionMNIST/raw``.
        download: Download the four files when missing (needs network access).
        image_size: Height and width of the returned images (resized from 28).
        batch_size: Images per batch.
        num_workers: DataLoader workers for ``in_memory=False``.
        val_fraction: Fraction of the training split held out for validation; 0 disables it.
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Keep the split as one uint8 tensor on the device and gather batches there.
    """

    dataset_name = "FashionMNIST"
    torchvision_class = torchvision.datasets.FashionMNIST

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        image_size: int = 28,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool = True,
    ) -> None:
        super().__init__(
            root, download, image_size, batch_size, num_workers, val_fraction, seed, in_memory
        )


# --- CIFAR-10 ----------------------------------------------------------------------------------


class CIFAR10(ImageDataModule):
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32 RGB, 10 classes.

    Reads torchvision's pickled batches in ``root/cifar-10-batches-py``. Where those are absent
    but a JPEG export ``root/CIFAR10-images/{train,test}/<class>/*.jpg`` exists (class folders
    sort into CIFAR-10's label order), that split is read with torchvision's ``ImageFolder``.

    Args:
        root: Directory holding ``cifar-10-batches-py`` (or ``CIFAR10-images``).
        download: Download the pickled batches when missing (needs network access).
        image_size: Height and width of the returned images (resized from 32).
        batch_size: Images per batch.
        num_workers: DataLoader workers for ``in_memory=False`` and the decode of JPEGs.
        val_fraction: Fraction of the training split held out for validation; 0 disables it.
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Keep the split as one uint8 tensor on the device and gather batches there.
    """

    dataset_name = "CIFAR10"
    native_size = 32

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool = True,
    ) -> None:
        super().__init__(
            root, download, image_size, batch_size, num_workers, val_fraction, seed, in_memory
        )

    def _open(self, source: str, transform: Any) -> Dataset:
        root = Path(self.root).expanduser().resolve()
        pickled = root / torchvision.datasets.CIFAR10.base_folder
        jpegs = root / "CIFAR10-images" / source
        try:
            if not pickled.is_dir() and jpegs.is_dir():
                return torchvision.datasets.ImageFolder(str(jpegs), transform=transform)
            return torchvision.datasets.CIFAR10(
                str(root), train=source == "train", transform=transform, download=self.download
            )
        except _LOAD_ERRORS as err:
            names = [name for name, _ in torchvision.datasets.CIFAR10.train_list]
            names += ["test_batch", "batches.meta"]
            raise DatasetNotFoundError(self._missing(pickled, names, err)) from None

    def _native(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        if not isinstance(dataset, torchvision.datasets.CIFAR10):
            return None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        return images, torch.tensor(dataset.targets, dtype=torch.int64)


# --- CelebA ------------------------------------------------------------------------------------


class CelebA(ImageDataModule):
    """CelebA aligned faces (202,599 images), centre-cropped to 140x140 and resized.

    The crop and resize follow the WAE paper's CelebA setup (Tolstikhin et al., 2018). Labels
    are identity ids. Validation is carved from the official training split like everywhere
    else; testing uses the official test split.

    Files: ``root/celeba/img_align_celeba/*.jpg`` and ``list_eval_partition.txt``,
    ``identity_CelebA.txt``, ``list_attr_celeba.txt``, ``list_bbox_celeba.txt``,
    ``list_landmarks_align_celeba.txt`` (torchvision reads all five).

    Args:
        root: Directory holding ``celeba``.
        download: Download from Google Drive when missing (needs network access and gdown).
        image_size: Height and width of the returned images (resized from the 140 crop).
        batch_size: Images per batch.
        num_workers: DataLoader workers (JPEG decoding is the bottleneck here).
        val_fraction: Fraction of the training split held out for validation; 0 disables it.
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Decode every image once into memory (about 2.4 GB at 64x64).
    """

    dataset_name = "CelebA"

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool = False,
    ) -> None:
        super().__init__(
            root, download, image_size, batch_size, num_workers, val_fraction, seed, in_memory
        )

    def _spatial(self) -> list[Any]:
        return [T.CenterCrop(140), T.Resize(self.image_size)]

    def _open(self, source: str, transform: Any) -> Dataset:
        root = Path(self.root).expanduser().resolve()
        try:
            return torchvision.datasets.CelebA(
                str(root),
                split=source,
                target_type="identity",
                transform=transform,
                download=self.download,
            )
        except _LOAD_ERRORS as err:
            names = ["img_align_celeba/"] + [
                name
                for _, _, name in torchvision.datasets.CelebA.file_list
                if not name.endswith(".zip")
            ]
            raise DatasetNotFoundError(self._missing(root / "celeba", names, err)) from None


# --- any folder of images ----------------------------------------------------------------------


class ImageFolder(ImageDataModule):
    """Any folder of images, resized on the short side and centre-cropped to a square.

    With one subfolder per class (``root/<class>/*.png``) the labels are the class indices in
    sorted order, as in torchvision's ImageFolder. When images lie directly in ``root``, all
    images below it form one class with label 0.

    Args:
        root: The training image folder.
        test_root: A folder of test images in the same layout; without it, testing uses the
            validation split.
        channels: 3 for RGB or 1 for grayscale.
        image_size: Height and width of the returned images.
        batch_size: Images per batch.
        num_workers: DataLoader workers (image decoding is the bottleneck here).
        val_fraction: Fraction of the training images held out for validation; 0 disables it.
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Decode every image once into memory.
    """

    dataset_name = "ImageFolder"
    downloadable = False

    def __init__(
        self,
        root: str,
        test_root: str | None = None,
        channels: int = 3,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        super().__init__(
            root, False, image_size, batch_size, num_workers, val_fraction, seed, in_memory
        )
        self.test_root = test_root
        self._channels = channels

    @property
    def has_test_split(self) -> bool:
        """Whether ``test_root`` was given; without it, testing uses the validation split."""
        return self.test_root is not None

    def _spatial(self) -> list[Any]:
        gray = [T.Grayscale(1)] if self.channels == 1 else []
        return [*gray, T.Resize(self.image_size), T.CenterCrop(self.image_size)]

    def _open(self, source: str, transform: Any) -> Dataset:
        folder = Path(self.root if source == "train" else self.test_root).expanduser().resolve()
        try:
            flat = any(
                entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS)
                for entry in os.scandir(folder)
            )
            cls = FlatImageFolder if flat else torchvision.datasets.ImageFolder
            return cls(str(folder), transform=transform)
        except _LOAD_ERRORS as err:
            expected = f"images ({', '.join(IMG_EXTENSIONS)}) directly or in class subfolders"
            raise DatasetNotFoundError(self._missing(folder, [expected], err)) from None


# --- scikit-learn digits -----------------------------------------------------------------------


class Digits(ImageDataModule):
    """scikit-learn's 1,797 handwritten 8x8 digits: bundled with scikit-learn, no download.

    There is no official test split; testing uses the validation split.

    Args:
        image_size: Height and width of the returned images (resized from 8).
        batch_size: Images per batch.
        num_workers: DataLoader workers for ``in_memory=False``.
        val_fraction: Fraction of the images held out for validation (and testing).
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Keep the images as one uint8 tensor on the device and gather batches there.
    """

    dataset_name = "Digits"
    native_channels = 1
    native_size = 8
    downloadable = False
    official_test_split = False

    def __init__(
        self,
        image_size: int = 8,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool = True,
    ) -> None:
        super().__init__(
            "", False, image_size, batch_size, num_workers, val_fraction, seed, in_memory
        )

    def _open(self, source: str, transform: Any) -> Dataset:
        return DigitsDataset(transform)

    def _native(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        return dataset.data.unsqueeze(1), dataset.targets  # (N, 1, 8, 8)
