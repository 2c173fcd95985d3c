"""Faults of the input that used to end in a traceback, a hang or a silent exit 0: each is now one
`genlit: error:` line and exit code 2, and an earlier run's files stay as they were. One row per
fault of the README's table ("Mistakes get one line")."""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import pytest
import torch
from fakedata import make_mnist, write_images
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs/digits/nsgan.yaml")
MNIST = str(REPO / "configs/mnist/nsgan.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", "--trainer.logger=false"]


class Mismatched(LightningDataModule):
    """A user's datamodule that declares no shape and yields 3x32x32 images."""

    def train_dataloader(self) -> DataLoader:
        images = torch.rand(8, 3, 32, 32) * 2 - 1
        return DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=4)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished digits run with its checkpoint, which no fault may touch."""
    root = tmp_path_factory.mktemp("earlier")
    main(["fit", "--config", DIGITS, "--generator_steps=1", *QUIET, "--trainer.callbacks=[]",
          "--trainer.enable_checkpointing=true", f"--trainer.default_root_dir={root}"])
    assert list(root.rglob("last.ckpt")), "the fixture run wrote no checkpoint"
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def one_line(capsys, args: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genlit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _evaluate(run: Path, tmp: Path, *extra: str) -> list[str]:
    ckpt = str(next(run.rglob("last.ckpt")))
    return ["evaluate", "--ckpt", ckpt, "--config", DIGITS, "--no_kid", "--num_samples", "20",
            "--cache_dir", str(tmp / "cache"), *extra]


def _sample(run: Path, tmp: Path, *extra: str) -> list[str]:
    ckpt = str(next(run.rglob("last.ckpt")))
    return ["sample", "--ckpt", ckpt, "--out", str(tmp / "out.png"), *extra]


def _one_image(run: Path, tmp: Path) -> list[str]:
    write_images(tmp / "one", 1, (16, 16), seed=0)
    return ["evaluate", "--images", str(tmp / "one"), "--config", DIGITS, "--no_kid",
            "--cache_dir", str(tmp / "cache")]


def _fit_config(text: str):
    def build(run: Path, tmp: Path) -> list[str]:
        (tmp / "x.yaml").write_text(text)
        return ["fit", "--config", str(tmp / "x.yaml"), *QUIET]
    return build


def _evaluate_config(text: str):
    def build(run: Path, tmp: Path) -> list[str]:
        (tmp / "x.yaml").write_text(text)
        ckpt = str(next(run.rglob("last.ckpt")))
        return ["evaluate", "--ckpt", ckpt, "--config", str(tmp / "x.yaml")]
    return build


def _truncated_mnist(run: Path, tmp: Path) -> list[str]:
    make_mnist(tmp, "MNIST")
    packed = tmp / "MNIST/raw/train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    return ["fit", "--config", MNIST, f"--data.init_args.root={tmp}", "--data.init_args.download=false",
            "--generator_steps=1", *QUIET]


def _image_folder(tmp: Path, bad: bytes) -> Path:
    folder = tmp / "faces"
    write_images(folder, 12, (16, 16), seed=0)
    (folder / "broken.png").write_bytes(bad)
    return folder


def _folder_args(folder: Path, *extra: str) -> list[str]:
    return ["fit", "--config", DIGITS, "--data=ImageFolder", f"--data.init_args.root={folder}",
            "--data.init_args.channels=1", "--data.init_args.image_size=16",
            "--data.init_args.batch_size=4", "--generator_steps=1", "--trainer.callbacks=[]", *QUIET, *extra]


def _truncated_png(tmp: Path) -> bytes:
    write_images(tmp / "whole", 1, (16, 16), seed=1)
    data = (tmp / "whole/000000.png").read_bytes()
    return data[: len(data) // 2]


CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# id -> (build the arguments from the earlier run and tmp, words the line must hold)
FAULTS = {
    "evaluate-batch-size-0": (lambda r, t: _evaluate(r, t, "--batch_size", "0"), ["--batch_size", "0"]),
    "evaluate-batch-size-negative": (lambda r, t: _evaluate(r, t, "--batch_size", "-5"), ["--batch_size", "-5"]),
    "evaluate-one-sample": (lambda r, t: _evaluate(r, t, "--num_samples", "1"), ["--num_samples", "2"]),
    "evaluate-one-image": (_one_image, ["holds 1 image", "2"]),
    "evaluate-cuda-without-gpu": (lambda r, t: _evaluate(r, t, "--device", "cuda"), ["cuda", "--device cpu"]),
    "evaluate-unwritable-cache": (
        lambda r, t: _evaluate(r, t, "--cache_dir", str(t / "a_file/cache")), ["a_file", "--cache_dir"]
    ),
    "evaluate-config-invalid-yaml": (_evaluate_config("data:\n  a: b: c\n"), ["x.yaml line 2", "mapping values"]),
    "sample-cuda-without-gpu": (lambda r, t: _sample(r, t, "--device", "cuda"), ["cuda", "--device cpu"]),
    "sample-nrow-negative": (lambda r, t: _sample(r, t, "--nrow", "-3"), ["--nrow", "-3"]),
    "sample-unwritable-out": (
        lambda r, t: ["sample", "--ckpt", str(next(r.rglob("last.ckpt"))), "--out", str(t / "a_file/s.png")],
        ["a_file", "--out"],
    ),
    "config-list": (_fit_config("- model: GAN\n- data: Digits\n"), ["x.yaml holds a list", "mapping"]),
    "config-empty": (_fit_config("# nothing yet\n"), ["x.yaml is empty", "mapping"]),
    "config-invalid-yaml": (_fit_config("model:\n  class_path: GAN\n  init_args: k: 2\n"), ["x.yaml line 3", "mapping values"]),
    "first-batch-shape": (
        lambda r, t: ["fit", "--config", DIGITS, "--data=test_faults_input.Mismatched", "--trainer.callbacks=[]",
                      "--trainer.callbacks+=genlit.callbacks.first_batch.FirstBatchCheck",
                      "--generator_steps=1", *QUIET],
        ["3x32x32", "DCGAN", "1x16x16"],
    ),
    "image-folder-garbage": (
        lambda r, t: _folder_args(_image_folder(t, b"not an image at all")), ["broken.png", "skip_unreadable"]
    ),
    "image-folder-truncated": (
        lambda r, t: _folder_args(_image_folder(t, _truncated_png(t))), ["broken.png", "skip_unreadable"]
    ),
    "mnist-truncated-archive": (_truncated_mnist, ["train-images-idx3-ubyte.gz", "truncated", "download"]),
    "batch-larger-than-dataset": (
        lambda r, t: ["fit", "--config", DIGITS, "--data.init_args.batch_size=5000", "--generator_steps=1", *QUIET],
        ["1,617", "batch_size=5000", "at most 1,617"],
    ),
}
GPU_FAULTS = {"evaluate-cuda-without-gpu", "sample-cuda-without-gpu"}


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=CUDA) if f in GPU_FAULTS else f for f in FAULTS]
)
def test_fault_is_one_line_and_loses_nothing(fault, earlier_run, tmp_path, capsys, no_network):
    build, words = FAULTS[fault]
    (tmp_path / "a_file").write_text("not a folder")
    args = build(earlier_run, tmp_path)
    if args[0] == "fit":
        args.append(f"--trainer.default_root_dir={tmp_path}")
    before = snapshot(earlier_run)
    line = one_line(capsys, args)
    for word in words:
        assert word in line, line
    after = snapshot(earlier_run)
    changed = {path for path, digest in before.items() if after.get(path) != digest}
    assert not changed, f"a fault removed or changed files of an earlier run: {changed}"
    assert not (tmp_path / "out.png").exists()


def test_skip_unreadable_trains_on_the_rest(tmp_path, capsys, caplog, no_network):
    folder = _image_folder(tmp_path, b"garbage")
    (folder / "also_broken.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="datamodules.images"):
        main(_folder_args(folder, "--data.init_args.skip_unreadable=true", f"--trainer.default_root_dir={tmp_path}"))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith("ImageFolder: skipped 2 unreadable images of 14 (first: ")
    assert "genlit: GAN finished at global step 2" in capsys.readouterr().out


def test_generate_into_refuses_batch_size_below_1():
    from genlit.metrics.fid import generate_into

    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        generate_into(None, lambda b: torch.zeros(b, 1, 8, 8), 4, batch_size=0)


def test_truncated_archive_leaves_no_extracted_file(tmp_path):
    from datamodules._datasets import DataError, extract_idx

    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(raw / "x.gz", "wb") as file:
        file.write(bytes(range(256)) * 100)
    (raw / "x.gz").write_bytes((raw / "x.gz").read_bytes()[:40])
    with pytest.raises(DataError, match="x.gz is truncated"):
        extract_idx(raw, ["x"])
    assert sorted(p.name for p in raw.iterdir()) == ["x.gz"]
