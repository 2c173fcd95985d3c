"""Every mistake and fault of the README's table ("Mistakes get one line"), one test each: it ends
in one `genlit: error:` line naming the problem and the fix, with exit code 2 (1 for a failure
mid-run, after the weights were saved), no traceback, and every file of earlier runs byte-identical.

``GENLIT_RECORD_MISTAKES=path.jsonl`` appends each case's line to that file (the README's table
is written from it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from fakedata import make_mnist, write_images
from lightning.pytorch import LightningDataModule
from test_checkpoint_safety import Payload
from torch.utils.data import DataLoader, TensorDataset

from genlit import checkpoint_io
from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
RING = str(REPO / "configs/toy/ring_nsgan.yaml")
RING_GP = str(REPO / "configs/toy/ring_wgan_gp.yaml")
DIGITS = str(REPO / "configs/digits/nsgan.yaml")
MNIST = str(REPO / "configs/mnist/nsgan.yaml")
DIGITS_AE = str(REPO / "configs/digits/ae.yaml")
DIGITS_AEOT = str(REPO / "configs/digits/aeot.yaml")
DIGITS_BEGAN = str(REPO / "configs/digits/began.yaml")
DIGITS_GLANN = str(REPO / "configs/digits/glann.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0"]
NO_LOGGER = [*QUIET, "--trainer.logger=false"]


class Mismatched(LightningDataModule):
    """A user's datamodule that declares no shape and yields 3x32x32 images."""

    def train_dataloader(self) -> DataLoader:
        images = torch.rand(8, 3, 32, 32) * 2 - 1
        return DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=4)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """Two finished runs no mistake may touch: ``ring/`` (CSV logs, last.ckpt) and ``digits/``."""
    root = tmp_path_factory.mktemp("earlier")
    main(["fit", "--config", RING, "--generator_steps=2", f"--trainer.logger.init_args.save_dir={root / 'ring'}",
          "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true", *QUIET])
    main(["fit", "--config", DIGITS, "--generator_steps=1", *NO_LOGGER, "--trainer.callbacks=[]",
          "--trainer.enable_checkpointing=true", f"--trainer.default_root_dir={root / 'digits'}"])
    for run in ("ring", "digits"):
        assert list((root / run).rglob("last.ckpt")), f"the {run} fixture run wrote no checkpoint"
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def ring_ckpt(root: Path) -> Path:
    return next((root / "ring").rglob("last.ckpt"))


def digits_ckpt(root: Path) -> Path:
    return next((root / "digits").rglob("last.ckpt"))


# --- files a mistake is made with ------------------------------------------------------------


def truncated(root: Path, tmp: Path) -> str:
    data = ring_ckpt(root).read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    return str(tmp / "truncated.ckpt")


def not_a_checkpoint(root: Path, tmp: Path) -> str:
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt")
    return str(tmp / "foreign.pt")


def altered(source: Path, tmp: Path, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """A copy of ``source`` whose generator weights (EMA copy included) went through ``change``."""
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["state_dict"] = {
        key: change(value) if key.startswith("generator") and value.is_floating_point() and "n_averaged" not in key
        else value for key, value in checkpoint["state_dict"].items()
    }
    torch.save(checkpoint, tmp / name)
    return str(tmp / name)


def nan_weights(source: Path, tmp: Path) -> str:
    return altered(source, tmp, "nan.ckpt", lambda w: torch.full_like(w, float("nan")))


def huge_weights(source: Path, tmp: Path) -> str:
    # Finite (1e30 times the trained ones, what a learning rate of 1e38 leaves), but no
    # sample drawn from them is.
    return altered(source, tmp, "huge.ckpt", lambda w: w * 1e30)


def digits_ae(tmp: Path) -> Path:
    """A digits autoencoder trained one step, latent_dim 8 (configs/digits/ae.yaml)."""
    main(["fit", "--config", DIGITS_AE, "--trainer.max_steps=1", "--trainer.max_epochs=1", *NO_LOGGER,
          "--trainer.callbacks=[]", "--trainer.enable_checkpointing=true", f"--trainer.default_root_dir={tmp / 'ae'}"])
    return next((tmp / "ae").rglob("*.ckpt"))


def nan_autoencoder(tmp: Path) -> str:
    checkpoint = torch.load(digits_ae(tmp), weights_only=True)
    checkpoint["state_dict"] = {
        key: torch.full_like(value, float("nan")) if key.startswith("encoder") and value.is_floating_point() else value
        for key, value in checkpoint["state_dict"].items()
    }
    torch.save(checkpoint, tmp / "nan_ae.ckpt")
    return str(tmp / "nan_ae.ckpt")


def crafted(tmp: Path) -> str:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Payload(tmp / "marker")}, tmp / "evil.ckpt")
    return str(tmp / "evil.ckpt")


def evaluate(ckpt: str | Path, tmp: Path, *extra: str) -> list[str]:
    return ["evaluate", "--ckpt", str(ckpt), "--config", DIGITS, "--no_kid", "--num_samples", "20",
            "--cache_dir", str(tmp / "cache"), *extra]


def sample(ckpt: str | Path, tmp: Path, *extra: str) -> list[str]:
    return ["sample", "--ckpt", str(ckpt), "--out", str(tmp / "out.png"), *extra]


def one_image(tmp: Path) -> list[str]:
    write_images(tmp / "one", 1, (16, 16), seed=0)
    return ["evaluate", "--images", str(tmp / "one"), "--config", DIGITS, "--no_kid", "--cache_dir", str(tmp / "cache")]


def config_file(tmp: Path, text: str) -> str:
    (tmp / "x.yaml").write_text(text)
    return str(tmp / "x.yaml")


def study_file(tmp: Path, change: str = "") -> str:
    """A study of the digits GAN, with one line of it replaced by ``change``."""
    lines = {"configs": f"configs: [{DIGITS}]", "seeds": "seeds: [0]", "budget": "budget: {generator_steps: 1}",
             "folder": f"folder: {tmp / 'study'}"}
    if change:
        lines[change.split(":")[0]] = change
    (tmp / "study.yaml").write_text("\n".join(lines.values()) + "\n")
    return str(tmp / "study.yaml")


def truncated_mnist(tmp: Path) -> list[str]:
    make_mnist(tmp, "MNIST")
    packed = tmp / "MNIST/raw/train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    return ["fit", "--config", MNIST, f"--data.init_args.root={tmp}", "--data.init_args.download=false",
            "--generator_steps=1", *NO_LOGGER]


def image_folder(tmp: Path, bad: bytes) -> Path:
    folder = tmp / "faces"
    write_images(folder, 12, (16, 16), seed=0)
    (folder / "broken.png").write_bytes(bad)
    return folder


def folder_args(folder: Path, *extra: str) -> list[str]:
    return ["fit", "--config", DIGITS, "--data=ImageFolder", f"--data.init_args.root={folder}",
            "--data.init_args.channels=1", "--data.init_args.image_size=16",
            "--data.init_args.batch_size=4", "--generator_steps=1", "--trainer.callbacks=[]", *NO_LOGGER, *extra]


def truncated_png(tmp: Path) -> bytes:
    write_images(tmp / "whole", 1, (16, 16), seed=1)
    data = (tmp / "whole/000000.png").read_bytes()
    return data[: len(data) // 2]


def full_disk(file, data):
    file.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fit(config: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    """A ``genlit fit`` mistake; ``{tmp}`` and ``{ring}`` (the earlier ring run) are filled in."""
    def build(root: Path, tmp: Path) -> list[str]:
        return ["fit", "--config", config, *(a.format(tmp=tmp, ring=root / "ring") for a in extra)]
    return build


@dataclass
class Case:
    build: Callable[[Path, Path], list[str]]
    words: list[str]
    code: int = 2
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    marks: list = field(default_factory=list)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
MIDRUN = ["--generator_steps=6", "--trainer.logger.init_args.save_dir={tmp}/runs", *QUIET]

CASES: dict[str, Case] = {
    # --- the config ---
    "unknown-model": Case(fit(RING, "--model=NoSuchGAN"), ["NoSuchGAN"]),
    "unknown-datamodule": Case(fit(RING, "--data=NoSuchData"), ["NoSuchData"]),
    "misspelt-key": Case(fit(RING, "--model.init_args.los=hinge"), ["los", "loss", "accepted keys: generator, discriminator"]),
    "wrong-type": Case(fit(RING, "--model.init_args.k=three"), ["three"]),
    "k-below-1": Case(fit(RING, "--model.init_args.k=0"), ["k", "0"]),
    "n_critic-below-1": Case(fit(RING_GP, "--model.init_args.n_critic=0"), ["n_critic", "0"]),
    "learning-rate-zero": Case(fit(RING, "--model.init_args.generator_optimizer.init_args.lr=0"),
                               ["generator_optimizer", "learning rate"]),
    "learning-rate-negative": Case(fit(RING, "--model.init_args.discriminator_optimizer.init_args.lr=-0.1"),
                                   ["discriminator_optimizer"]),
    "generator-steps-0": Case(fit(RING, "--generator_steps=0"), ["generator_steps"]),
    "config-invalid-yaml": Case(lambda r, t: ["fit", "--config", config_file(t, "model:\n  class_path: GAN\n  init_args: k: 2\n")],
                                ["x.yaml line 3", "mapping values"]),
    "config-empty": Case(lambda r, t: ["fit", "--config", config_file(t, "# nothing yet\n")], ["x.yaml is empty", "mapping"]),
    "config-list": Case(lambda r, t: ["fit", "--config", config_file(t, "- model: GAN\n- data: Digits\n")],
                        ["x.yaml holds a list", "mapping"]),
    # --- networks and data ---
    "unsupported-image-size": Case(fit(DIGITS, "--model.init_args.generator.init_args.image_size=20"), ["20"]),
    "image-size-mismatch": Case(fit(DIGITS, "--data.init_args.image_size=28"), ["image_size", "28", "16"]),
    "point-network-on-images": Case(fit(RING, "--data=Digits"), ["MLPGenerator", "2-D points", "images"]),
    "channels-mismatch": Case(fit(DIGITS, "--model.init_args.generator.init_args.channels=3"), ["channels", "3"]),
    "first-batch-shape": Case(fit(DIGITS, "--data=test_bad_input.Mismatched", "--trainer.callbacks=[]",
                                  "--trainer.callbacks+=genlit.callbacks.first_batch.FirstBatchCheck",
                                  "--generator_steps=1", *NO_LOGGER), ["3x32x32", "DCGAN", "1x16x16"]),
    "dataset-missing-offline": Case(fit(MNIST, "--data.init_args.root={tmp}/nowhere"), ["MNIST", "nowhere"]),
    "mnist-truncated-archive": Case(lambda r, t: truncated_mnist(t), ["train-images-idx3-ubyte.gz", "truncated", "download"]),
    "image-folder-garbage": Case(lambda r, t: folder_args(image_folder(t, b"not an image at all")),
                                 ["broken.png", "skip_unreadable"]),
    "image-folder-truncated": Case(lambda r, t: folder_args(image_folder(t, truncated_png(t))),
                                   ["broken.png", "skip_unreadable"]),
    "batch-larger-than-dataset": Case(fit(DIGITS, "--data.init_args.batch_size=5000", "--generator_steps=1", *NO_LOGGER),
                                      ["1,617", "batch_size=5000", "at most 1,617"]),
    # --- the machine and the run's folders, before the first step ---
    "unwritable-output": Case(fit(RING, "--trainer.logger.init_args.save_dir={tmp}/a_file/runs"), ["a_file", "save_dir"]),
    "gpu-accelerator-without-gpu": Case(fit(RING, "--trainer.accelerator=gpu", "--trainer.logger.init_args.save_dir={tmp}/runs"),
                                        ["--trainer.accelerator=gpu", "no CUDA GPU", "cpu"], marks=[NO_GPU]),
    "fid-cache-unwritable": Case(fit(DIGITS, "--generator_steps=400", "--trainer.callbacks=[]", "--trainer.callbacks+=FID",
                                     "--trainer.callbacks.features=digits", "--trainer.callbacks.cache_dir={tmp}/a_file/cache",
                                     "--trainer.logger.init_args.save_dir={tmp}/runs", *QUIET), ["FID cache_dir", "a_file"]),
    "fid-inception-weights-missing": Case(fit(DIGITS, "--generator_steps=400", "--trainer.callbacks=[]", "--trainer.callbacks+=FID",
                                              "--trainer.callbacks.weights_path={tmp}/inception.pth",
                                              "--trainer.logger.init_args.save_dir={tmp}/runs", *QUIET),
                                          ["inception.pth", "does not exist", "weights_path"]),
    # --- checkpoints ---
    "truncated-checkpoint": Case(lambda r, t: ["fit", "--config", RING, f"--ckpt_path={truncated(r, t)}"], ["truncated"]),
    "foreign-checkpoint": Case(lambda r, t: ["fit", "--config", RING, f"--ckpt_path={not_a_checkpoint(r, t)}"],
                               ["not a Lightning checkpoint"]),
    "checkpoint-of-another-model": Case(lambda r, t: ["fit", "--config", DIGITS, f"--ckpt_path={ring_ckpt(r)}"],
                                        ["different model"]),
    "missing-checkpoint": Case(fit(RING, "--ckpt_path={tmp}/none.ckpt"), ["does not exist"]),
    "nothing-to-resume": Case(fit(RING, "--ckpt_path=last", "--trainer.logger.init_args.save_dir={tmp}/fresh"), ["no last*.ckpt"]),
    "crafted-checkpoint-sample": Case(lambda r, t: sample(crafted(t), t), ["--trust_checkpoint", "run code"]),
    "crafted-checkpoint-evaluate": Case(lambda r, t: evaluate(crafted(t), t), ["--trust_checkpoint", "run code"]),
    "crafted-checkpoint-fit": Case(lambda r, t: ["fit", "--config", RING, f"--ckpt_path={crafted(t)}"],
                                   ["--trust_checkpoint", "run code"]),
    "nan-checkpoint-sample": Case(lambda r, t: sample(nan_weights(ring_ckpt(r), t), t), ["not finite", "earlier checkpoint"]),
    "nan-checkpoint-evaluate": Case(lambda r, t: evaluate(nan_weights(digits_ckpt(r), t), t), ["not finite", "earlier checkpoint"]),
    "nan-checkpoint-fit": Case(lambda r, t: ["fit", "--config", RING, f"--ckpt_path={nan_weights(ring_ckpt(r), t)}"],
                               ["not finite", "earlier checkpoint"]),
    "huge-checkpoint-sample": Case(lambda r, t: sample(huge_weights(ring_ckpt(r), t), t),
                                   ["samples drawn from the weights are not finite", "earlier checkpoint"]),
    "huge-checkpoint-fit": Case(lambda r, t: ["fit", "--config", RING, f"--ckpt_path={huge_weights(ring_ckpt(r), t)}"],
                                ["samples drawn from the weights are not finite", "earlier checkpoint"]),
    # --- during the run ---
    "training-diverged": Case(fit(RING, "--generator_steps=200", "--model.init_args.discriminator_optimizer.init_args.lr=1e30",
                                  "--model.init_args.generator_optimizer.init_args.lr=1e30",
                                  "--trainer.logger.init_args.save_dir={tmp}/runs"), ["training diverged", "learning rate"]),
    "disk-full-checkpoint": Case(fit(RING, *MIDRUN), ["No space left on device", "free"],
                                 patch=lambda mp: mp.setattr(checkpoint_io, "write_chunks", full_disk)),
    "evaluation-fails-midrun": Case(fit(RING, *MIDRUN, "--trainer.callbacks+=user_classes.FailingEvaluation"),
                                    ["FailingEvaluation failed at generator step 3", "saved in", "--ckpt_path last"], code=1),
    # --- AE-OT ---
    "aeot-frozen-untrained-autoencoder": Case(fit(DIGITS_AEOT, "--model.init_args.freeze_autoencoder=true"),
                                              ["freeze_autoencoder", "untrained", "autoencoder_checkpoint"]),
    "aeot-one-code": Case(fit(DIGITS_AEOT, "--model.init_args.ot_codes=1"), ["ot_codes", ">= 2"]),
    "aeot-latent-mismatch": Case(lambda r, t: ["fit", "--config", DIGITS_AEOT,
                                               f"--model.init_args.autoencoder_checkpoint={digits_ae(t)}",
                                               "--model.init_args.encoder.init_args.latent_dim=6",
                                               "--model.init_args.decoder.init_args.latent_dim=6"],
                                 ["latent_dim 8", "set latent_dim: 8"]),
    "aeot-autoencoder-with-nan": Case(lambda r, t: ["fit", "--config", DIGITS_AEOT,
                                                    f"--model.init_args.autoencoder_checkpoint={nan_autoencoder(t)}"],
                                      ["not finite"]),
    # --- BEGAN and GLANN ---
    "began-gamma-0": Case(fit(DIGITS_BEGAN, "--model.init_args.gamma=0"), ["gamma", "(0, 1]"]),
    "began-classifier-discriminator": Case(fit(DIGITS_BEGAN, *QUIET, "--generator_steps=2",
                                               "--model.init_args.discriminator=genlit.networks.dcgan.DCGANDiscriminator",
                                               "--model.init_args.discriminator.init_args.image_size=16",
                                               "--model.init_args.discriminator.init_args.channels=1"),
                                           ["must be an autoencoder", "BEGANAutoencoder"]),
    "glann-without-positions": Case(fit(DIGITS_GLANN, "--data.init_args.indices=false"),
                                    ["needs each image's position", "indices: true"]),
    "glann-budget-inside-glo": Case(fit(DIGITS_GLANN, "--trainer.max_epochs=50"),
                                    ["max_epochs=50 ends inside the GLO stage", "glo_epochs=100"]),
    "glann-perceptual-without-vgg": Case(fit(DIGITS_GLANN, "--model.init_args.reconstruction=perceptual",
                                             "--model.init_args.vgg_weights={tmp}/vgg16.pth"),
                                         ["VGG16", "not found", "reconstruction: laplacian"]),
    # --- genlit sample and evaluate ---
    "evaluate-batch-size-0": Case(lambda r, t: evaluate(digits_ckpt(r), t, "--batch_size", "0"), ["--batch_size", "0"]),
    "evaluate-batch-size-negative": Case(lambda r, t: evaluate(digits_ckpt(r), t, "--batch_size", "-5"), ["--batch_size", "-5"]),
    "evaluate-one-sample": Case(lambda r, t: evaluate(digits_ckpt(r), t, "--num_samples", "1"), ["--num_samples", "2"]),
    "evaluate-stacked-without-mnist": Case(lambda r, t: evaluate(digits_ckpt(r), t, "--stacked"),
                                           ["--stacked", "--classes mnist"]),
    "evaluate-one-image": Case(lambda r, t: one_image(t), ["holds 1 image", "2"]),
    "evaluate-cuda-without-gpu": Case(lambda r, t: evaluate(digits_ckpt(r), t, "--device", "cuda"), ["cuda", "--device cpu"],
                                      marks=[NO_GPU]),
    "evaluate-unwritable-cache": Case(lambda r, t: evaluate(digits_ckpt(r), t, "--cache_dir", str(t / "a_file/cache")),
                                      ["a_file", "--cache_dir"]),
    "evaluate-config-invalid-yaml": Case(lambda r, t: ["evaluate", "--ckpt", str(digits_ckpt(r)), "--config",
                                                       config_file(t, "data:\n  a: b: c\n")], ["x.yaml line 2", "mapping values"]),
    "sample-cuda-without-gpu": Case(lambda r, t: sample(digits_ckpt(r), t, "--device", "cuda"), ["cuda", "--device cpu"],
                                    marks=[NO_GPU]),
    "sample-nrow-negative": Case(lambda r, t: sample(digits_ckpt(r), t, "--nrow", "-3"), ["--nrow", "-3"]),
    # --- genlit study ---
    "study-missing-file": Case(lambda r, t: ["study", "run", str(t / "nope.yaml")], ["nope.yaml", "does not exist"]),
    "study-seeds-not-a-list": Case(lambda r, t: ["study", "run", study_file(t, "seeds: 3")],
                                   ["seeds must be a list of integers", "[0, 1, 2]"]),
    "study-budget-missing": Case(lambda r, t: ["study", "run", study_file(t, "budget: null")],
                                 ["budget must be {generator_steps: N} or {epochs: N}"]),
    "study-unknown-config": Case(lambda r, t: ["study", "run", study_file(t, "configs: [configs/mnist/nope.yaml]")],
                                 ["configs/mnist/nope.yaml does not exist"]),
    "study-workers-0": Case(lambda r, t: ["study", "run", study_file(t), "--workers", "0"], ["--workers-per-device", ">= 1"]),
    "study-gpu-without-gpu": Case(lambda r, t: ["study", "run", study_file(t), "--devices", "0"], ["0 CUDA GPU", "cpu"],
                                  marks=[NO_GPU]),
    "study-report-before-run": Case(lambda r, t: ["study", "report", study_file(t)], ["no study", "genlit study run"]),
    "sample-unwritable-out": Case(lambda r, t: ["sample", "--ckpt", str(digits_ckpt(r)), "--out", str(t / "a_file/s.png")],
                                  ["a_file", "--out"]),
}


@pytest.mark.parametrize("case", [pytest.param(name, marks=c.marks) for name, c in CASES.items()])
def test_mistake_is_one_line_and_loses_nothing(case, earlier, tmp_path, capsys, monkeypatch, no_network):
    spec = CASES[case]
    (tmp_path / "a_file").write_text("not a folder")
    args = spec.build(earlier, tmp_path)
    if args[0] == "fit":
        if not any(a.startswith(("--trainer.logger", "--trainer.default_root_dir")) for a in args):
            # The mistake is made in the earlier run's own folder, where it could do most harm.
            args.append(f"--trainer.logger.init_args.save_dir={earlier / 'ring'}")
        if not any(a.startswith("--trainer.limit_val_batches") for a in args):
            args += QUIET
        if not any(a.startswith("--trainer.default_root_dir") for a in args):
            args.append(f"--trainer.default_root_dir={tmp_path}")  # never the current directory
    if spec.patch is not None:
        spec.patch(monkeypatch)
    before = snapshot(earlier)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genlit: error:")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    assert exit_info.value.code == spec.code, err[-3000:]
    for word in spec.words:
        assert word in lines[0], lines[0]
    after = snapshot(earlier)
    changed = {path for path, digest in before.items() if after.get(path) != digest}
    assert not changed, f"a mistake removed or changed files of an earlier run: {changed}"
    assert not (tmp_path / "marker").exists(), "a crafted checkpoint ran its code"
    assert not (tmp_path / "out.png").exists()
    record = os.environ.get("GENLIT_RECORD_MISTAKES")
    if record:
        with open(record, "a") as file:
            file.write(json.dumps({"case": case, "line": lines[0], "tmp": str(tmp_path),
                                   "earlier": str(earlier)}) + "\n")
