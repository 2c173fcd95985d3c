"""The FID cache is keyed on the reference files' listing: replaced images are never reused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import make_celeba, make_cifar, make_mnist
from PIL import Image
from torch import nn

from datamodules.images import CIFAR10, MNIST, CelebA, ImageFolder
from genlit.evaluate import evaluate
from genlit.metrics.features import load_features
from genlit.metrics.fid import reference_key, reference_path

pytestmark = pytest.mark.usefixtures("no_network")


class Pool(nn.Module):
    """A 16-d feature network: 4x4 average pooling of a 1x16x16 image."""

    def forward(self, images):
        return nn.functional.avg_pool2d(images.float(), 4).flatten(1)  # (B, 16)


FEATURES = load_features(Pool())


class CountingFolder(ImageFolder):
    """ImageFolder that counts the passes over its training images."""

    passes = 0

    def train_dataloader(self):
        CountingFolder.passes += 1
        return super().train_dataloader()


def write_pngs(folder: Path, n: int, seed: int, high: int = 256) -> None:
    """n grayscale 16x16 PNGs with pixels uniform in [0, high), named 0000.png, 0001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, high, (16, 16), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def measure(root: Path, images: Path, cache: Path):
    dm = CountingFolder(str(root), image_size=16, channels=1, batch_size=50)
    return evaluate(dm, images=images, features=FEATURES, split="train", kid=False, cache_dir=cache)


def key_of(dm, split: str = "train") -> dict:
    return reference_key(dm, split, FEATURES)


# --- image folders, end to end through genlit.evaluate -----------------------------------------


def test_images_replaced_in_the_same_folder_get_new_statistics(tmp_path):
    real, fake, cache = tmp_path / "real", tmp_path / "fake", tmp_path / "cache"
    write_pngs(real, 60, seed=0)
    shutil.copytree(real, fake)  # the generated side: the real images themselves
    CountingFolder.passes = 0
    before = measure(real, fake, cache)
    torch.testing.assert_close(before.fid, 0.0, atol=1e-3, rtol=0)
    assert CountingFolder.passes == 1 and before.reference.path.parent == cache

    # The same file names in the same folder, other (darker) images.
    shutil.rmtree(real)
    write_pngs(real, 60, seed=1, high=64)
    after = measure(real, fake, cache)
    assert CountingFolder.passes == 2  # read again, not taken from the cache
    assert after.reference.path != before.reference.path
    assert after.reference.key["contents"] != before.reference.key["contents"]
    fresh = measure(real, fake, tmp_path / "fresh_cache")
    assert after.fid > 100 and after.fid == fresh.fid
    assert len(list(cache.glob("*.pt"))) == 2


def test_an_unchanged_folder_reuses_its_cache_file_and_a_touched_file_does_not(tmp_path):
    real, fake, cache = tmp_path / "real", tmp_path / "fake", tmp_path / "cache"
    write_pngs(real, 60, seed=0)
    write_pngs(fake, 60, seed=2, high=128)
    CountingFolder.passes = 0
    first = measure(real, fake, cache)
    again = measure(real, fake, cache)
    assert CountingFolder.passes == 1  # the second run read the cache file only
    assert again.reference.path == first.reference.path and again.fid == first.fid

    # One file's mtime moved by one nanosecond, its contents untouched: a new key.
    image = real / "0007.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    dm = CountingFolder(str(real), image_size=16, channels=1)
    assert reference_path(key_of(dm), cache) != first.reference.path
    touched = measure(real, fake, cache)
    assert CountingFolder.passes == 2 and touched.fid == first.fid  # same pixels, same FID


def test_a_file_added_removed_or_renamed_changes_the_key(tmp_path):
    real = tmp_path / "real"
    write_pngs(real, 10, seed=0)
    keys = [key_of(ImageFolder(str(real), image_size=16))]
    (real / "0003.png").rename(real / "0003b.png")
    keys.append(key_of(ImageFolder(str(real), image_size=16)))
    (real / "0004.png").unlink()
    keys.append(key_of(ImageFolder(str(real), image_size=16)))
    write_pngs(real / "more", 1, seed=5)  # a class subfolder's image counts too
    keys.append(key_of(ImageFolder(str(real), image_size=16)))
    assert len({reference_path(k, tmp_path).name for k in keys}) == 4


def test_the_test_split_of_an_image_folder_is_keyed_on_test_root(tmp_path):
    train, test = tmp_path / "train", tmp_path / "test"
    write_pngs(train, 8, seed=0)
    write_pngs(test, 8, seed=1)

    def keys():
        dm = ImageFolder(str(train), test_root=str(test), image_size=16, val_fraction=0.25)
        return {split: reference_path(key_of(dm, split), tmp_path) for split in ("val", "test")}

    before = keys()
    write_pngs(test, 9, seed=2)  # one more test image, the others rewritten
    after_test = keys()
    assert after_test["test"] != before["test"] and after_test["val"] == before["val"]
    (train / "0000.png").unlink()
    after_train = keys()
    assert after_train["val"] != before["val"] and after_train["test"] == after_test["test"]


def test_generated_images_replaced_in_the_same_folder_give_their_own_fid(tmp_path):
    real, fake, cache = tmp_path / "real", tmp_path / "fake", tmp_path / "cache"
    write_pngs(real, 60, seed=0)
    write_pngs(fake, 60, seed=3, high=128)
    CountingFolder.passes = 0
    first = measure(real, fake, cache)
    shutil.rmtree(fake)
    shutil.copytree(real, fake)
    second = measure(real, fake, cache)
    assert CountingFolder.passes == 1 and second.reference.path == first.reference.path
    assert first.fid > 10 and abs(second.fid) < 1e-3  # the new fakes were read, not the old


# --- the datasets a user keeps in a data folder -------------------------------------------------


def rewrite(path: Path) -> None:
    """Other bytes of the same size, then the old mtime back: only the ctime tells."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_mnist_is_keyed_on_the_files_torchvision_reads(tmp_path):
    make_mnist(tmp_path, "MNIST")
    make_mnist(tmp_path, "FashionMNIST", seed=1)
    first = key_of(MNIST(str(tmp_path)))
    # The key already describes the extracted files that loading reads.
    raw = tmp_path / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").is_file()
    dm = MNIST(str(tmp_path))
    dm.setup("fit")
    assert key_of(dm) == first
    # Another dataset of the same data folder is not part of the key.
    (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").unlink()
    assert key_of(MNIST(str(tmp_path))) == first
    test_key = key_of(MNIST(str(tmp_path)), "test")
    rewrite(raw / "train-images-idx3-ubyte")
    assert key_of(MNIST(str(tmp_path))) != first
    assert key_of(MNIST(str(tmp_path)), "test") == test_key  # t10k files untouched


def test_cifar10_and_celeba_are_keyed_on_their_files(tmp_path):
    make_cifar(tmp_path)
    cifar = key_of(CIFAR10(str(tmp_path)), "test")
    rewrite(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert key_of(CIFAR10(str(tmp_path)), "test") != cifar

    make_celeba(tmp_path, [0, 0, 1, 2])
    celeba = key_of(CelebA(str(tmp_path)), "test")
    rewrite(tmp_path / "celeba" / "img_align_celeba" / "000003.jpg")
    assert key_of(CelebA(str(tmp_path)), "test") != celeba
