"""Tiny datasets written in each real on-disk format (IDX, CIFAR pickles, image folders, CelebA)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """IDX files as distributed: gzip, magic 2051/2049, big-endian sizes, no extracted copy."""
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def make_mnist(root: Path, folder: str, n_train: int = 50, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / folder / "raw", prefix, images, labels)
        data[prefix] = (images, labels)
    return data


def make_cifar(root: Path, per_batch: int = 8, n_test: int = 10, seed: int = 0):
    """cifar-10-batches-py as torchvision unpacks it: pickled dicts of (N, 3072) uint8 rows."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # R plane, G plane, B plane
        labels = rng.integers(0, 10, n).tolist()
        entry = {"batch_label": name, "labels": labels, "data": rows, "filenames": ["x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
        batches[name] = (rows.reshape(n, 3, 32, 32), np.array(labels))
    meta = {
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    train = [batches[n] for n in names[:5]]
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), batches


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int, ext: str = "png"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.{ext}")


CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
)


def make_celeba(root: Path, partition: list[int]) -> None:
    """CelebA's folder as torchvision expects it: 178x218 aligned JPEGs and five text files."""
    base = root / "celeba"
    n = len(partition)
    write_images(base / "img_align_celeba", n, (178, 218), seed=3, ext="jpg")
    names = [f"{i:06d}.jpg" for i in range(n)]
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{f} {p}\n" for f, p in zip(names, partition, strict=True))
    )
    (base / "identity_CelebA.txt").write_text(
        "".join(f"{f} {100 + i}\n" for i, f in enumerate(names))
    )
    rows = "".join(f"{f}  {' '.join(['-1', '1'] * 20)}\n" for f in names)
    (base / "list_attr_celeba.txt").write_text(f"{n}\n{CELEBA_ATTRS}\n{rows}")
    rows = "".join(f"{f} 95 71 226 313\n" for f in names)
    (base / "list_bbox_celeba.txt").write_text(f"{n}\nimage_id x_1 y_1 width height\n{rows}")
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
    header += "rightmouth_x rightmouth_y"
    rows = "".join(f"{f} 69 109 106 113 77 142 73 152 108 154\n" for f in names)
    (base / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{header}\n{rows}")


