"""The shared machinery of the image datamodules: arguments, splits, loaders, both paths.

Subclasses in :mod:`datamodules.images` say where a split comes from and how it is resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from datamodules._datasets import DataError
from datamodules._inmemory import DeviceCache, IndexBatch, IndexDataset, decode_uint8, keep_batch
from datamodules._resume import ResumableSampler


def _reason(err: BaseException) -> str:
    # torchvision's messages span lines (one per mirror); the error must stay one line.
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class PositionedSubset(Subset):
    """A :class:`~torch.utils.data.Subset` whose samples also carry their position in the
    whole dataset: ``(image, label, position)``."""

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        position = self.indices[i]
        return (*self.dataset[position], position)

    def __getitems__(self, positions: list[int]) -> list[tuple[Any, ...]]:
        return [self[i] for i in positions]


class ImageDataModule(LightningDataModule):
    """Base class: splits, loaders, the in-memory path and argument checks for image datasets.

    Subclasses say where a split comes from (``_open``) and how its PIL images are resized
    (``_spatial``); everything else is shared.

    Args:
        root: Directory holding the dataset in torchvision's layout (downloads go there too);
            for ImageFolder, the folder of training images. None: ``data``, except for
            ImageFolder, which needs a folder.
        download: Download the dataset into ``root`` when it is missing (needs network access).
        image_size: Height and width of the returned images, in pixels. None: the dataset's
            native size: 28 for MNIST and Fashion-MNIST, 32 for CIFAR-10, 64 for
            CelebA/ImageFolder, 8 for Digits.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes for ``in_memory=False``; with
            ``in_memory=True`` they only speed up the one-off decode at setup.
        val_fraction: Fraction of the training split held out for validation, chosen with
            ``seed``; 0 disables validation.
        seed: Seed for the validation split and the training shuffle order.
        in_memory: Decode the whole split once into a uint8 tensor on the device and gather
            batches there, instead of decoding images per batch in DataLoader workers.
            None: the dataset's default: True, except False for CelebA (about 2.4 GB at 64x64)
            and ImageFolder.
        indices: Give every batch a third element, each image's position in its source split
            (int64, shape (B,)): batches become ``(images, labels, positions)``. Models that
            learn one code per training image (GLANN) need it; the positions run from 0 to
            ``index_count - 1``.
    """

    dataset_name: ClassVar[str] = "images"
    native_channels: ClassVar[int] = 3
    native_size: ClassVar[int | None] = None
    downloadable: ClassVar[bool] = True
    official_test_split: ClassVar[bool] = True
    # What the None-able arguments resolve to; every argument is declared here only.
    default_root: ClassVar[str | None] = "data"
    default_image_size: ClassVar[int] = 32
    default_in_memory: ClassVar[bool] = True

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        image_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        in_memory: bool | None = None,
        indices: bool = False,
    ) -> None:
        super().__init__()
        defaulted: dict[str, Any] = {}  # arguments given as None: this dataset's defaults
        if root is None:
            root = defaulted["root"] = self.default_root
        if image_size is None:
            image_size = defaulted["image_size"] = self.default_image_size
        if in_memory is None:
            in_memory = defaulted["in_memory"] = self.default_in_memory
        if root is None:
            raise ValueError(f"{self.dataset_name} needs root: it has no default folder")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        # The CLI records the None it was given; the hparams (logged, and in checkpoints) must
        # say what was used, as they did when each dataset declared its own defaults.
        self.save_hyperparameters(defaulted)  # an empty dict leaves them as they are
        self.root = root
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.in_memory = in_memory
        self.indices = indices
        self._image_size = image_size
        self._channels = self.native_channels
        self._cache = DeviceCache()
        self._datasets: dict[str, Dataset] = {}  # source split -> float dataset (in_memory=False)
        self._splits: dict[str, tuple[str, Tensor]] = {}  # split -> (source, positions)

    @property
    def channels(self) -> int:
        """Image channels C: 1 for grayscale, 3 for RGB."""
        return self._channels

    @property
    def image_size(self) -> int:
        """Image height and width H = W."""
        return self._image_size

    @property
    def dims(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def index_count(self) -> int:
        """Images in the training source split (validation included): the range of the
        positions ``indices=True`` gives. Known after ``setup``."""
        if "train" in self._cache:
            return len(self._cache.cpu["train"][0])
        if "train" in self._datasets:
            return len(self._datasets["train"])
        raise RuntimeError(f"{self.dataset_name} is not set up: call setup() before index_count")

    @property
    def has_test_split(self) -> bool:
        """Whether a separate test split exists; without one, testing uses validation."""
        return self.official_test_split

    # --- what subclasses provide -------------------------------------------------------------

    def _open(self, source: str, transform: Any) -> Dataset:
        """The torchvision dataset of ``source`` ("train" or "test"), else DatasetNotFoundError."""
        raise NotImplementedError

    def _spatial(self) -> list[Any]:
        """PIL transforms applied before tensor conversion (resize, crop, channel conversion)."""
        if self.image_size == self.native_size:
            return []
        return [T.Resize(self.image_size)]

    def _native(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        """The dataset's own uint8 array as (N, C, H, W) and labels, skipping PIL, or None."""
        return None

    def _missing(self, folder: Path, expected: Sequence[str], err: BaseException | None) -> str:
        """One-line message for a dataset that is absent: where, what, and how to fix it."""
        if not self.downloadable:
            fix = "check the path"
        elif self.download:
            fix = "copy them there, or retry with network access"
        else:
            fix = "copy them there, or set download=True (data.download=true) with network access"
        reason = f" ({_reason(err)})" if err is not None else ""
        return f"{self.dataset_name} not found in {folder}: expected {', '.join(expected)}; {fix}{reason}"

    # --- Lightning hooks ---------------------------------------------------------------------

    def _sources(self) -> list[str]:
        return ["train", "test"] if self.has_test_split else ["train"]

    def prepare_data(self) -> None:
        """Downloads missing files; Lightning runs this on one process per node before setup."""
        if self.download and self.downloadable:
            for source in self._sources():
                self._open(source, transform=None)

    def setup(self, stage: str | None = None) -> None:
        """Loads the splits ``stage`` needs and carves the validation split out of "train"."""
        if stage in (None, "fit", "validate") or not self.has_test_split:
            self._setup_train()
        if stage in (None, "test"):
            self._setup_test()

    def _setup_train(self) -> None:
        if "train" in self._splits:
            return
        n = self._load("train")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = round(n * self.val_fraction)
        if self.val_fraction > 0:
            n_val = min(max(n_val, 1), n - 1)
        self._splits["val"] = ("train", perm[:n_val].sort().values)
        self._splits["train"] = ("train", perm[n_val:].sort().values)

    def _setup_test(self) -> None:
        if "test" in self._splits:
            return
        if self.has_test_split:
            self._splits["test"] = ("test", torch.arange(self._load("test")))
        elif len(self._splits["val"][1]) > 0:
            # No official test split: testing reuses the held-out validation images.
            self._splits["test"] = self._splits["val"]
        else:
            raise ValueError(
                f"{self.dataset_name} has no official test split; set val_fraction > 0 to hold "
                "one out (testing then uses the validation split)"
            )

    def _load(self, source: str) -> int:
        """Opens ``source`` for the chosen path and returns its number of images."""
        if not self.in_memory:
            dataset = self._open(source, self._float_transform())
            self._datasets[source] = dataset
            return len(dataset)
        dataset = self._open(source, self._uint8_transform())
        arrays = self._native(dataset) if not self._spatial() else None
        images, labels = arrays if arrays is not None else decode_uint8(dataset, self.num_workers)
        self._cache.add(source, images, labels)
        return len(images)

    def _uint8_transform(self) -> T.Compose:
        return T.Compose([*self._spatial(), T.PILToTensor()])

    def _float_transform(self) -> T.Compose:
        half = [0.5] * self.channels
        return T.Compose([*self._spatial(), T.ToTensor(), T.Normalize(half, half)])

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self._splits:
            raise RuntimeError(f"{split} split of {self.dataset_name} is not set up; call setup()")
        source, positions = self._splits[split]
        if train and len(positions) < self.batch_size:
            # drop_last would leave no batch: fit would end at once, exit 0, having trained nothing.
            n = len(positions)
            fix = f"set data.init_args.batch_size to at most {n:,}" if n else "add images"
            raise DataError(
                f"{self.dataset_name}: the training split has {n:,} images, fewer than "
                f"batch_size={self.batch_size}, and the last incomplete batch is dropped, so an "
                f"epoch would train nothing: {fix}"
            )
        dataset = (
            IndexDataset(source, positions)
            if self.in_memory
            else (PositionedSubset if self.indices else Subset)(self._datasets[source], positions.tolist())
        )
        common: dict[str, Any] = dict(batch_size=self.batch_size, drop_last=train)
        if train:
            # The shuffle is a function of (seed, epoch) and a resumed run skips the batches
            # already trained; the loader's own generator keeps the global RNG untouched.
            trainer = self.trainer
            common["sampler"] = ResumableSampler(dataset, self.batch_size, trainer, seed=self.seed)
            common["generator"] = torch.Generator().manual_seed(self.seed)
        if self.in_memory:
            return DataLoader(dataset, collate_fn=keep_batch, **common)
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **common,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, last incomplete batch dropped."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order; ``[]`` (validation off) when val_fraction is 0."""
        if "val" in self._splits and len(self._splits["val"][1]) == 0:
            return []
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Official test split in a fixed order (the validation split where none exists)."""
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turns an in-memory index batch, already on the device, into ``(images, labels)``.

        Args:
            batch: An :class:`~datamodules._inmemory.IndexBatch` (in-memory path) or an
                ``(images, labels)`` batch, which passes through unchanged.
            dataloader_idx: Index of the dataloader the batch came from (unused).
        """
        if isinstance(batch, IndexBatch):
            images, labels = self.gather(batch.indices, batch.source)
            return (images, labels, batch.indices) if self.indices else (images, labels)
        return batch

    def gather(self, indices: Tensor, source: str = "train") -> tuple[Tensor, Tensor]:
        """Images and labels at positions of a resident split, on ``indices.device``.

        Args:
            indices: int64 positions into the source split, shape (B,); move them to the
                target device first, the split is copied there once on first use.
            source: "train" (which also holds the validation images) or "test".

        Returns:
            ``(images, labels)``: float32 (B, C, H, W) in [-1, 1] and int64 (B,).
        """
        return self._cache.gather(source, indices)

    def teardown(self, stage: str) -> None:
        """Frees the device copies of the in-memory splits; the CPU copies stay for reuse."""
        self._cache.release_devices()
