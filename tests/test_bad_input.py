"""Every user mistake ends in one `genlit: error:` line and a non-zero exit, and nothing already
written is lost or changed. One row per mistake of the README's table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
RING = str(REPO / "configs/toy/ring_nsgan.yaml")
RING_GP = str(REPO / "configs/toy/ring_wgan_gp.yaml")
DIGITS = str(REPO / "configs/digits/nsgan.yaml")
MNIST = str(REPO / "configs/mnist/nsgan.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0"]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished ring run (CSV logs and last.ckpt) that no mistake may touch."""
    root = tmp_path_factory.mktemp("earlier")
    main(["fit", "--config", RING, "--generator_steps=2", f"--trainer.logger.init_args.save_dir={root}",
          "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true", *QUIET])
    assert list(root.rglob("last.ckpt")), "the fixture run wrote no checkpoint"
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def last_ckpt(root: Path) -> Path:
    return next(root.rglob("last.ckpt"))


def truncated(root: Path, tmp: Path) -> str:
    data = last_ckpt(root).read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    return str(tmp / "truncated.ckpt")


def not_a_checkpoint(root: Path, tmp: Path) -> str:
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt")
    return str(tmp / "foreign.pt")


# id -> (config, extra args (a callable gets the earlier run and tmp), words the line must hold)
MISTAKES = {
    "unknown-model": (RING, ["--model=NoSuchGAN"], ["NoSuchGAN"]),
    "unknown-datamodule": (RING, ["--data=NoSuchData"], ["NoSuchData"]),
    "misspelt-key": (RING, ["--model.init_args.los=hinge"], ["los"]),
    "wrong-type": (RING, ["--model.init_args.k=three"], ["three"]),
    "unsupported-image-size": (DIGITS, ["--model.init_args.generator.init_args.image_size=20"], ["20"]),
    "image-size-mismatch": (DIGITS, ["--data.init_args.image_size=28"], ["image_size", "28", "16"]),
    "point-network-on-images": (RING, ["--data=Digits"], ["MLPGenerator", "2-D points", "images"]),
    "channels-mismatch": (DIGITS, ["--model.init_args.generator.init_args.channels=3"], ["channels", "3"]),
    "dataset-missing-offline": (MNIST, ["--data.init_args.root={tmp}/nowhere"], ["MNIST", "nowhere"]),
    "truncated-checkpoint": (RING, [lambda r, t: f"--ckpt_path={truncated(r, t)}"], ["truncated"]),
    "foreign-checkpoint": (RING, [lambda r, t: f"--ckpt_path={not_a_checkpoint(r, t)}"], ["not a Lightning checkpoint"]),
    "checkpoint-of-another-model": (
        DIGITS, [lambda r, t: f"--ckpt_path={last_ckpt(r)}"], ["different model"]
    ),
    "missing-checkpoint": (RING, ["--ckpt_path={tmp}/none.ckpt"], ["does not exist"]),
    "nothing-to-resume": (
        RING, ["--ckpt_path=last", "--trainer.logger.init_args.save_dir={tmp}/fresh"], ["no last*.ckpt"]
    ),
    "k-below-1": (RING, ["--model.init_args.k=0"], ["k", "0"]),
    "n_critic-below-1": (RING_GP, ["--model.init_args.n_critic=0"], ["n_critic", "0"]),
    "learning-rate-zero": (RING, ["--model.init_args.generator_optimizer.init_args.lr=0"], ["generator_optimizer", "learning rate"]),
    "learning-rate-negative": (RING, ["--model.init_args.discriminator_optimizer.init_args.lr=-0.1"], ["discriminator_optimizer"]),
    "generator-steps-0": (RING, ["--generator_steps=0"], ["generator_steps"]),
    "unwritable-output": (RING, ["--trainer.logger.init_args.save_dir={tmp}/a_file/runs"], ["a_file", "save_dir"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_mistake_is_one_line_and_loses_nothing(mistake, earlier_run, tmp_path, capsys, no_network):
    config, extra, words = MISTAKES[mistake]
    (tmp_path / "a_file").write_text("not a folder")
    args = [a(earlier_run, tmp_path) if callable(a) else a.format(tmp=tmp_path) for a in extra]
    if not any(a.startswith("--trainer.logger.init_args.save_dir") for a in args):
        # The mistakes aimed at a checkpoint resume into the earlier run's folder.
        args.append(f"--trainer.logger.init_args.save_dir={earlier_run}")
    before = snapshot(earlier_run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, *args, *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genlit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    after = snapshot(earlier_run)
    changed = {path for path, digest in before.items() if after.get(path) != digest}
    assert not changed, f"a mistake removed or changed files of an earlier run: {changed}"
