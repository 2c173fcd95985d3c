"""Image datamodules on tiny datasets written in each real on-disk format, plus shared/data."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fakedata import make_celeba, make_cifar, make_mnist, write_images
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from datamodules.images import (
    CIFAR10,
    MNIST,
    CelebA,
    DatasetNotFoundError,
    Digits,
    FashionMNIST,
    ImageFolder,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# One uint8 step in [-1, 1]; the two loading paths may differ by float rounding only.
ONE_LEVEL = 1 / 127.5


pytestmark = pytest.mark.usefixtures("no_network")


def first_batch(dm, split: str = "train"):
    """First batch of a split as the Trainer would see it, also for the in-memory path."""
    loader = getattr(dm, f"{split}_dataloader")()
    return dm.on_after_batch_transfer(next(iter(loader)), 0)


def all_batches(dm, split: str):
    batches = [dm.on_after_batch_transfer(b, 0) for b in getattr(dm, f"{split}_dataloader")()]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def as_real(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32)) / 127.5 - 1


# --- MNIST family ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
@pytest.mark.parametrize("download", [False, True])
def test_mnist_family_reads_gz_idx(tmp_path, cls, download):
    data = make_mnist(tmp_path, cls.__name__)
    dm = cls(root=str(tmp_path), download=download, batch_size=16, val_fraction=0.2)
    dm.prepare_data()
    dm.setup(None)
    assert dm.dims == (1, 28, 28) and dm.channels == 1 and dm.image_size == 28
    assert len(dm.train_dataloader()) == 40 // 16  # 50 images, 10 held out, last batch dropped
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 2

    x, y = first_batch(dm)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1

    # The test split holds exactly the written pixels and labels, in file order.
    x, y = all_batches(dm, "test")
    torch.testing.assert_close(x, as_real(data["t10k"][0])[:, None], atol=ONE_LEVEL, rtol=0)
    assert y.tolist() == data["t10k"][1].tolist()


def test_val_split_is_disjoint_seeded_and_complete(tmp_path):
    data = make_mnist(tmp_path, "MNIST", n_train=50)
    dms = [
        MNIST(str(tmp_path), download=False, batch_size=5, val_fraction=0.2, seed=s)
        for s in (0, 0, 1)
    ]
    for dm in dms:
        dm.setup("fit")
    train_labels, val_labels = [], []
    for dm in dms:
        _, y_train = all_batches(dm, "train")
        _, y_val = all_batches(dm, "val")
        assert len(y_train) == 40 and len(y_val) == 10
        train_labels.append(y_train)
        val_labels.append(y_val)
    # Same seed: same split and same shuffle order; another seed: another order.
    assert torch.equal(train_labels[0], train_labels[1])
    assert torch.equal(val_labels[0], val_labels[1])
    assert not torch.equal(train_labels[0], train_labels[2])
    # Training and validation images together are the whole training file, each once.
    x_train, _ = all_batches(dms[0], "train")
    x_val, _ = all_batches(dms[0], "val")
    written = as_real(data["train"][0]).flatten(1)
    seen = torch.cat([x_train, x_val]).flatten(1)
    order = torch.cdist(seen, written).argmin(dim=1)
    assert sorted(order.tolist()) == list(range(50))


def test_bad_arguments_raise_value_error():
    for kwargs in (
        {"batch_size": 0},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"image_size": 0},
        {"num_workers": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            MNIST(**kwargs)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder("x", channels=2)


# --- the two paths agree -----------------------------------------------------------------------


def _build(kind: str, tmp_path: Path, in_memory: bool):
    if kind.startswith("mnist"):
        if not (tmp_path / "MNIST").exists():
            make_mnist(tmp_path, "MNIST", n_train=40)
        size = 28 if kind == "mnist" else 32
        return MNIST(str(tmp_path), False, size, batch_size=8, in_memory=in_memory)
    if kind == "cifar":
        if not (tmp_path / "cifar-10-batches-py").exists():
            make_cifar(tmp_path)
        return CIFAR10(str(tmp_path), False, batch_size=8, in_memory=in_memory)
    return Digits(image_size=12, batch_size=350, in_memory=in_memory)  # 5 batches too


@pytest.mark.usefixtures("skip_md5")
@pytest.mark.parametrize("kind", ["mnist", "mnist32", "cifar", "digits"])
def test_in_memory_batches_equal_standard_dataloader(tmp_path, kind):
    fast, slow = _build(kind, tmp_path, True), _build(kind, tmp_path, False)
    fast.setup("fit")
    slow.setup("fit")
    loader = slow.train_dataloader()
    assert isinstance(loader.dataset, torch.utils.data.Subset)  # the standard path really ran
    fast_batches = [fast.on_after_batch_transfer(b, 0) for b in fast.train_dataloader()]
    assert len(fast_batches) == len(loader) == 5
    # Same seed, same shuffle order: batch i of one path is batch i of the other.
    for (x_fast, y_fast), (x_slow, y_slow) in zip(fast_batches, loader, strict=True):
        assert x_fast.shape == x_slow.shape == (fast.batch_size, *fast.dims)
        torch.testing.assert_close(x_fast, x_slow, atol=ONE_LEVEL, rtol=0)
        assert torch.equal(y_fast, y_slow)


# --- CIFAR-10 ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("skip_md5")
def test_cifar10_pickled_batches(tmp_path):
    train_x, train_y, batches = make_cifar(tmp_path, per_batch=8, n_test=10)
    dm = CIFAR10(str(tmp_path), download=False, batch_size=5, val_fraction=0.25)
    dm.setup(None)
    assert dm.dims == (3, 32, 32)
    assert len(dm.train_dataloader()) == 6 and len(dm.val_dataloader()) == 2
    x, y = all_batches(dm, "test")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    # The rows are channel planes: (N, 3072) -> (N, 3, 32, 32) without a transpose.
    torch.testing.assert_close(x, as_real(batches["test_batch"][0]), atol=ONE_LEVEL, rtol=0)
    assert y.tolist() == batches["test_batch"][1].tolist()
    # The training tensor is data_batch_1..5 in order; train and val split it between them.
    x, y = dm.gather(torch.arange(40), "train")
    torch.testing.assert_close(x, as_real(train_x), atol=ONE_LEVEL, rtol=0)
    assert y.tolist() == train_y.tolist()
    _, y_train = all_batches(dm, "train")
    _, y_val = all_batches(dm, "val")
    assert sorted(torch.cat([y_train, y_val]).tolist()) == sorted(train_y.tolist())


# --- CelebA ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("skip_md5")
@pytest.mark.parametrize("in_memory", [False, True])
def test_celeba_layout_and_crop(tmp_path, in_memory):
    make_celeba(tmp_path, partition=[0] * 6 + [1] * 2 + [2] * 3)
    dm = CelebA(str(tmp_path), download=False, batch_size=2, in_memory=in_memory)
    dm.setup(None)
    assert dm.dims == (3, 64, 64)
    assert len(dm.train_dataloader()) == 3 and dm.val_dataloader() == []
    x, y = all_batches(dm, "test")
    assert x.shape == (3, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert y.tolist() == [108, 109, 110]  # identities of the three test-partition images

    # The same pixels torchvision gives for CenterCrop(140) then Resize(64) of the JPEG.
    image = Image.open(tmp_path / "celeba" / "img_align_celeba" / "000008.jpg")
    expected = crop_and_resize(image, 64)
    torch.testing.assert_close(x[0], expected, atol=ONE_LEVEL, rtol=0)


def crop_and_resize(image: Image.Image, size: int) -> torch.Tensor:
    from torchvision.transforms import functional as F

    cropped = F.resize(F.center_crop(image, [140]), [size])
    return F.to_tensor(cropped) * 2 - 1


# --- image folders -----------------------------------------------------------------------------


def test_image_folder_with_class_subfolders(tmp_path):
    write_images(tmp_path / "train" / "cat", 3, (40, 30), seed=0)
    write_images(tmp_path / "train" / "dog", 5, (30, 40), seed=1)
    write_images(tmp_path / "test" / "cat", 2, (20, 20), seed=2)
    write_images(tmp_path / "test" / "dog", 1, (20, 20), seed=3)
    dm = ImageFolder(
        str(tmp_path / "train"), test_root=str(tmp_path / "test"), image_size=16, batch_size=4
    )
    dm.setup(None)
    x, y = all_batches(dm, "train")
    assert x.shape == (8, 3, 16, 16) and sorted(y.tolist()) == [0] * 3 + [1] * 5
    x, y = all_batches(dm, "test")
    assert x.shape == (3, 3, 16, 16) and y.tolist() == [0, 0, 1]


@pytest.mark.parametrize("in_memory", [False, True])
def test_flat_image_folder_has_label_zero(tmp_path, in_memory):
    write_images(tmp_path / "faces", 7, (24, 20), seed=0)
    dm = ImageFolder(
        str(tmp_path / "faces"),
        channels=1,
        image_size=8,
        batch_size=3,
        val_fraction=0.3,
        in_memory=in_memory,
    )
    dm.setup("fit")
    dm.setup("test")
    assert dm.dims == (1, 8, 8)
    x, y = all_batches(dm, "train")
    assert x.shape == (3, 1, 8, 8) and y.tolist() == [0, 0, 0]  # 5 train images, drop_last
    x_val, _ = all_batches(dm, "val")
    x_test, _ = all_batches(dm, "test")  # no test_root: testing reuses validation
    assert len(x_val) == 2 and torch.equal(x_val, x_test)
    assert x.min() >= -1 and x.max() <= 1


# --- scikit-learn digits -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 16])
def test_digits_sizes_and_count(size):
    dm = Digits(image_size=size, batch_size=100, val_fraction=0.1)
    dm.setup("fit")
    _, y_val = all_batches(dm, "val")
    n_train = len(dm.train_dataloader().dataset)
    assert n_train + len(y_val) == 1797 and len(y_val) == 180
    x, y = first_batch(dm)
    assert x.shape == (100, 1, size, size) and x.min() == -1 and x.max() == 1
    assert set(y.tolist()) <= set(range(10))


def test_digits_without_val_has_no_test_split():
    dm = Digits(image_size=28)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1797 // 64 and dm.val_dataloader() == []
    assert first_batch(dm)[0].shape == (64, 1, 28, 28)
    with pytest.raises(ValueError, match="no official test split"):
        dm.setup("test")


# --- missing data ------------------------------------------------------------------------------


MISSING = [
    (MNIST, "MNIST/raw", "train-images-idx3-ubyte.gz"),
    (FashionMNIST, "FashionMNIST/raw", "t10k-labels-idx1-ubyte.gz"),
    (CIFAR10, "cifar-10-batches-py", "data_batch_5"),
    (CelebA, "celeba", "list_eval_partition.txt"),
]


@pytest.mark.parametrize(("cls", "folder", "file"), MISSING)
@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_raises_one_clear_error(tmp_path, monkeypatch, cls, folder, file, download):
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torchvision.datasets.celeba, "download_file_from_google_drive", offline)

    dm = cls(root=str(tmp_path / "empty"), download=download)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    assert cls.__name__ in message and file in message
    assert str((tmp_path / "empty" / folder).resolve()) in message
    assert ("download=True" in message) != download  # the fix fits the situation
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert bool(attempts) == download  # the download was tried, and failed offline


def test_missing_image_folder(tmp_path):
    dm = ImageFolder(str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError, match="ImageFolder not found in .*nothing"):
        dm.setup("fit")


# --- through a Trainer -------------------------------------------------------------------------


class Recorder(LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = {"train": [], "val": [], "test": []}

    def _record(self, stage, batch):
        x, y = batch
        self.seen[stage].append((x.shape, x.dtype, float(x.min()), float(x.max()), y.shape))
        return (self.weight * x.mean()) ** 2 + self.weight**2

    def training_step(self, batch, batch_idx):
        return self._record("train", batch)

    def validation_step(self, batch, batch_idx):
        self._record("val", batch)

    def test_step(self, batch, batch_idx):
        self._record("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# val_fraction=0 returns [] from val_dataloader, which Lightning runs as "no validation" but
# warns about once.
@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
@pytest.mark.parametrize(("val_fraction", "in_memory"), [(0.0, True), (0.1, True), (0.1, False)])
def test_trainer_gets_image_batches(val_fraction, in_memory):
    dm = Digits(image_size=16, batch_size=32, val_fraction=val_fraction, in_memory=in_memory)
    model = Recorder()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen["train"]) == 3
    assert len(model.seen["val"]) == (2 if val_fraction else 0)
    for shape, dtype, low, high, labels in model.seen["train"] + model.seen["val"]:
        assert shape == (32, 1, 16, 16) and dtype == torch.float32 and labels == (32,)
        assert -1 <= low < high <= 1
    if val_fraction:
        trainer.test(model, datamodule=dm, verbose=False)
        assert len(model.seen["test"]) == 6  # 180 held-out digits in batches of 32


# --- the real files in shared/data -------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no shared/data")
def test_real_mnist_from_shared_data(tmp_path):
    # torchvision reads extracted files next to the .gz files, so work on a writable copy.
    shutil.copytree(SHARED_DATA / "MNIST", tmp_path / "MNIST")
    dm = MNIST(str(tmp_path), download=False, batch_size=1000)
    dm.setup(None)
    assert len(dm.train_dataloader().dataset) == 60_000 and len(dm.train_dataloader()) == 60
    assert len(dm.test_dataloader().dataset) == 10_000
    x, y = dm.gather(torch.tensor([0]), "train")
    assert y.tolist() == [5] and x.shape == (1, 1, 28, 28) and x.min() == -1 and x.max() == 1


@pytest.mark.skipif(not (SHARED_DATA / "CIFAR10-images").is_dir(), reason="no shared/data")
def test_real_cifar10_jpeg_test_split(tmp_path):
    (tmp_path / "CIFAR10-images").symlink_to(SHARED_DATA / "CIFAR10-images")
    dm = CIFAR10(str(tmp_path), download=False, batch_size=500, in_memory=False)
    dm.setup("test")
    loader = dm.test_dataloader()
    assert len(loader.dataset) == 10_000 and len(loader) == 20
    x, y = next(iter(loader))
    assert x.shape == (500, 3, 32, 32) and y.tolist() == [0] * 500  # airplane comes first


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_extracted_idx_files_follow_the_umask(tmp_path, umask, mode):
    # As a plain open(..., "wb") would create them, not a temporary file's private 0600.
    make_mnist(tmp_path, "MNIST")
    previous = os.umask(umask)
    try:
        MNIST(str(tmp_path)).setup("fit")
    finally:
        os.umask(previous)
    raw = tmp_path / "MNIST" / "raw"
    extracted = sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz"))
    assert extracted == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    ]  # no temporary file left behind
    assert {(raw / name).stat().st_mode & 0o777 for name in extracted} == {mode}
