"""Every experiment YAML in configs/ parses and trains two steps (image datasets on tiny files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fakedata import make_celeba, make_cifar, make_mnist

from genlit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Pieces stacked on an experiment with a second --config, not experiments themselves.
PIECES = {"logger", "trainer"}
EXPERIMENTS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in PIECES
)


def _fake_root(data_class: str, root: Path) -> Path | None:
    """Writes a tiny copy of the dataset in its real layout; None for data that needs no files."""
    name = data_class.rsplit(".", 1)[-1]
    if name in ("MNIST", "FashionMNIST"):
        make_mnist(root, name, n_train=300, n_test=20)
    elif name == "CIFAR10":
        make_cifar(root, per_batch=26)
    elif name == "CelebA":
        make_celeba(root, [0] * 130 + [1] * 10 + [2] * 10)
    else:
        return None
    return root


def test_there_are_configs():
    assert len(EXPERIMENTS) >= 30


@pytest.mark.usefixtures("no_network", "skip_md5")
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_trains_two_steps(config: Path, tmp_path: Path):
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    root = _fake_root(data_class, tmp_path / "data")
    main([
        "fit", "--config", str(config),
        *([f"--data.init_args.root={root}", "--data.init_args.download=false"] if root else []),
        "--generator_steps=null", "--trainer.max_steps=2", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ])


@pytest.mark.slow
def test_mnist_dcgan_trains_on_the_real_files(shared_data: Path, tmp_path: Path):
    import shutil

    from lightning.pytorch.cli import LightningCLI

    root = tmp_path / "data"
    shutil.copytree(shared_data / "MNIST", root / "MNIST")  # torchvision extracts next to the .gz
    seen = {}
    original = LightningCLI._run_subcommand

    def spy(self, subcommand):
        original(self, subcommand)
        seen["samples"] = len(self.datamodule.train_dataloader().dataset)
        seen["g"] = self.model.generator_updates

    LightningCLI._run_subcommand = spy
    try:
        main([
            "fit", "--config", str(CONFIGS / "mnist" / "nsgan.yaml"),
            f"--data.init_args.root={root}", "--generator_steps=3",
            "--trainer.limit_val_batches=1", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        ])
    finally:
        LightningCLI._run_subcommand = original
    assert seen["g"] == 3
    assert seen["samples"] == 57000  # 60,000 training digits less the 5% validation split
