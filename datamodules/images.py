"""Image LightningDataModules: MNIST, Stacked MNIST, Fashion-MNIST, CIFAR-10, CelebA, image
folders, digits.

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

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules._datasets import (
    DataError,
    DigitsDataset,
    FlatImageFolder,
    extract_idx,
    load_image,
    unreadable_images,
)
from datamodules._image_base import ImageDataModule

__all__ = [
    "CIFAR10",
    "MNIST",
    "CelebA",
    "StackedMNIST",
    "DataError",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
]

# Everything a torchvision download can raise offline: URLError is an OSError, and torchvision
# wraps failed mirrors and a missing gdown in RuntimeError.
_LOAD_ERRORS = (OSError, RuntimeError)
log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded; the message says where to put it."""


def _source(datamodule: ImageDataModule, split: str) -> str:
    """The source split ("train" or "test") that ``split`` is carved from."""
    return "test" if split == "test" and datamodule.has_test_split else "train"


# --- MNIST family ------------------------------------------------------------------------------


class _IDXDataModule(ImageDataModule):
    """MNIST-style IDX datasets read through a torchvision ``MNIST`` subclass."""

    torchvision_class: ClassVar[type[torchvision.datasets.MNIST]] = torchvision.datasets.MNIST
    native_channels = 1
    native_size = 28
    default_image_size = 28

    def _raw(self) -> Path:
        root = Path(self.root).expanduser().resolve()
        return root / self.torchvision_class.__name__ / "raw"

    def split_files(self, split: str) -> list[Path]:
        """The extracted IDX files torchvision reads for ``split`` (extracted first, as loading
        does, so the FID cache key names the files as they will be read)."""
        raw = self._raw()
        names = [name.removesuffix(".gz") for name, _ in self.torchvision_class.resources]
        if raw.is_dir():
            with contextlib.suppress(OSError):  # a read-only folder: loading will say why
                extract_idx(raw, names)
        prefix = "train-" if _source(self, split) == "train" else "t10k-"
        return [raw / name for name in names if name.startswith(prefix)]

    def _open(self, source: str, transform: Any) -> Dataset:
        cls = self.torchvision_class
        root = Path(self.root).expanduser().resolve()
        raw = self._raw()
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
    """

    dataset_name = "MNIST"
    torchvision_class = torchvision.datasets.MNIST


class StackedDigits(Dataset):
    """Three images of a one-channel dataset stacked into the channels of one: Stacked MNIST.

    Item ``i`` stacks the images at ``triples[i]`` (channel 0 first) and is labelled
    ``100 a + 10 b + c`` from their labels ``(a, b, c)``.
    """

    def __init__(self, base: Dataset, triples: Tensor) -> None:
        self.base = base
        self.triples = triples
        targets = getattr(base, "targets", None)
        self.targets = None if targets is None else stacked_labels(targets[triples])
        self.data = getattr(base, "data", None)

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        items = [self.base[int(j)] for j in self.triples[i]]
        image = torch.cat([x for x, _ in items], dim=0)  # (3, H, W)
        return image, int(stacked_labels(torch.tensor([[int(y) for _, y in items]]))[0])


def stacked_labels(digits: Tensor) -> Tensor:
    """``100 a + 10 b + c`` of each row ``(a, b, c)`` of digit labels ``(N, 3)``."""
    places = 10 ** torch.arange(digits.shape[1] - 1, -1, -1)
    return (digits.long() * places).sum(dim=1)


class StackedMNIST(_IDXDataModule):
    """Stacked MNIST (Metz et al. 2017): three random MNIST digits in the channels of one
    28x28x3 image, so 1,000 classes (modes), labelled ``100 a + 10 b + c``.

    The standard image-scale test of mode collapse: a generator covering every mode shows all
    1,000 digit triples (:class:`genlit.callbacks.ClassCoverage` with ``stacked: true``
    counts them with the MNIST classifier, channel by channel). The triples are drawn
    uniformly, with replacement, from the MNIST split by ``stack_seed``: the training images
    from the 60,000 training digits, the test images from the 10,000 test digits. Files as for
    :class:`MNIST`.

    Args:
        num_images: Stacked images per source split; ``None``: as many as the split has digits
            (60,000 and 10,000). The published setups train on 25,600 to 128,000.
        stack_seed: Seed of the triples (the validation split and shuffle use ``seed``).
        **kwargs: :class:`ImageDataModule`'s arguments.
    """

    dataset_name = "StackedMNIST"
    torchvision_class = torchvision.datasets.MNIST
    native_channels = 3

    def __init__(self, num_images: int | None = None, stack_seed: int = 0, **kwargs: Any) -> None:
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be >= 1 or null, got {num_images}")
        super().__init__(**kwargs)
        self.num_images = num_images
        self.stack_seed = stack_seed

    def _raw(self) -> Path:
        return Path(self.root).expanduser().resolve() / "MNIST" / "raw"

    def _triples(self, source: str, digits: int) -> Tensor:
        n = self.num_images or digits
        offset = 0 if source == "train" else 1  # the test triples are another stream
        generator = torch.Generator().manual_seed(self.stack_seed * 2 + offset)
        return torch.randint(digits, (n, 3), generator=generator)

    def _open(self, source: str, transform: Any) -> Dataset:
        base = super()._open(source, transform)
        return StackedDigits(base, self._triples(source, len(base)))

    def _float_transform(self) -> T.Compose:
        return T.Compose([*self._spatial(), T.ToTensor(), T.Normalize([0.5], [0.5])])  # per digit

    def _native(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        digits = dataset.base.data  # (M, 28, 28)
        return digits[dataset.triples], dataset.targets  # (N, 3, 28, 28), (N,)


class FashionMNIST(_IDXDataModule):
    """Fashion-MNIST clothing: 60,000 training and 10,000 test images, 28x28 grayscale.

    Files: ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``,
    extracted next to themselves on first use, so ``root`` must be writable.
    """

    dataset_name = "FashionMNIST"
    torchvision_class = torchvision.datasets.FashionMNIST


# --- CIFAR-10 ----------------------------------------------------------------------------------


class CIFAR10(ImageDataModule):
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32 RGB, 10 classes.

    Reads torchvision's pickled batches in ``root/cifar-10-batches-py``. Where those are absent
    but a JPEG export ``root/CIFAR10-images/{train,test}/<class>/*.jpg`` exists (class folders
    sort into CIFAR-10's label order), that split is read with torchvision's ``ImageFolder``,
    decoded by ``num_workers`` workers.
    """

    dataset_name = "CIFAR10"
    native_size = 32
    default_image_size = 32

    def split_files(self, split: str) -> list[Path]:
        """The pickled batches ``split`` is read from (and the label names), else its JPEGs."""
        source = _source(self, split)
        root = Path(self.root).expanduser().resolve()
        cifar = torchvision.datasets.CIFAR10
        pickled, jpegs = root / cifar.base_folder, root / "CIFAR10-images" / source
        if not pickled.is_dir() and jpegs.is_dir():
            return [jpegs]
        batches = cifar.train_list if source == "train" else cifar.test_list
        return [pickled / name for name, _ in batches] + [pickled / cifar.meta["filename"]]

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
    ``list_landmarks_align_celeba.txt`` (torchvision reads all five). ``download`` fetches them
    from Google Drive (needs network access and gdown). JPEG decoding is the bottleneck, so
    ``num_workers`` matters here; ``in_memory=True`` holds about 2.4 GB at 64x64.
    """

    dataset_name = "CelebA"
    default_image_size = 64
    default_in_memory = False

    def _spatial(self) -> list[Any]:
        return [T.CenterCrop(140), T.Resize(self.image_size)]

    def split_files(self, split: str) -> list[Path]:
        """The whole ``root/celeba`` folder: the images and the partition and label files."""
        root = Path(self.root).expanduser().resolve()
        return [root / torchvision.datasets.CelebA.base_folder]

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
    images below it form one class with label 0. Image decoding is the bottleneck, so
    ``num_workers`` matters here. Nothing is downloaded; the other arguments are
    :class:`ImageDataModule`'s.

    Args:
        test_root: A folder of test images in the same layout; without it, testing uses the
            validation split.
        channels: 3 for RGB or 1 for grayscale.
        skip_unreadable: Leave out the files PIL cannot read (garbage, empty, truncated),
            with one log line counting them. False: the first such file stops the run before
            training, named with PIL's reason. Every file's header is checked once at setup.
    """

    dataset_name = "ImageFolder"
    downloadable = False
    default_root = None
    default_image_size = 64
    default_in_memory = False

    def __init__(
        self,
        *args: Any,
        test_root: str | None = None,
        channels: int = 3,
        skip_unreadable: bool = False,
        **kwargs: Any,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        super().__init__(*args, download=False, **kwargs)
        # download is fixed, not an argument here: hparams must rebuild the datamodule.
        self.hparams.pop("download", None)
        self.test_root = test_root
        self.skip_unreadable = skip_unreadable
        self._channels = channels

    @property
    def has_test_split(self) -> bool:
        """Whether ``test_root`` was given; without it, testing uses the validation split."""
        return self.test_root is not None

    def split_files(self, split: str) -> list[Path]:
        """``root`` for the training and validation splits, ``test_root`` for testing."""
        folder = self.test_root if _source(self, split) == "test" else self.root
        return [Path(folder).expanduser().resolve()]

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
            dataset = cls(str(folder), transform=transform, loader=load_image)
        except _LOAD_ERRORS as err:
            expected = f"images ({', '.join(IMG_EXTENSIONS)}) directly or in class subfolders"
            raise DatasetNotFoundError(self._missing(folder, [expected], err)) from None
        self._leave_out_unreadable(dataset)
        return dataset

    def _leave_out_unreadable(self, dataset: torchvision.datasets.ImageFolder) -> None:
        """Fails on (or, with ``skip_unreadable``, drops) the files PIL cannot read.

        Raises:
            DataError: the first unreadable file and why, with the fix.
        """
        bad = unreadable_images([path for path, _ in dataset.samples])
        if not bad:
            return
        first = f"{bad[0][0]}: {bad[0][1]}"
        if not self.skip_unreadable:
            more = f" (and {len(bad) - 1:,} more)" if len(bad) > 1 else ""
            raise DataError(
                f"{self.dataset_name}: unreadable image {first}{more}; delete or replace it, or "
                "set data.init_args.skip_unreadable: true to leave unreadable images out"
            )
        total, skipped = len(dataset.samples), {path for path, _ in bad}
        dataset.samples = [s for s in dataset.samples if s[0] not in skipped]
        dataset.imgs = dataset.samples
        dataset.targets = [target for _, target in dataset.samples]
        log.warning(
            f"{self.dataset_name}: skipped {len(bad):,} unreadable images of {total:,} (first: {first})"
        )


# --- scikit-learn digits -----------------------------------------------------------------------


class Digits(ImageDataModule):
    """scikit-learn's 1,797 handwritten 8x8 digits: bundled with scikit-learn, no download.

    There is no official test split; testing uses the validation split (``val_fraction`` of
    the images). The arguments are :class:`ImageDataModule`'s, less ``root`` and ``download``.
    """

    dataset_name = "Digits"
    native_channels = 1
    native_size = 8
    downloadable = False
    official_test_split = False
    default_image_size = 8

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(root="", download=False, **kwargs)
        # Fixed, not arguments here: hparams must rebuild the datamodule.
        for name in ("root", "download"):
            self.hparams.pop(name, None)

    def split_files(self, split: str) -> list[Path]:
        """None: the digits ship inside scikit-learn, not in a folder of the user's."""
        return []

    def _open(self, source: str, transform: Any) -> Dataset:
        return DigitsDataset(transform)

    def _native(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        return dataset.data.unsqueeze(1), dataset.targets  # (N, 1, 8, 8)
