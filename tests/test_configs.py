"""Every experiment YAML in configs/ parses and trains two steps (image datasets on tiny files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fakedata import make_celeba, make_cifar, make_mnist
from lightning.pytorch.cli import LightningCLI

from genlit.callbacks import ClassCoverage
from genlit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Pieces stacked on an experiment with a second --config, not experiments themselves.
PIECES = {"logger"}
EXPERIMENTS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in PIECES
)


def _fake_root(data_class: str, root: Path) -> Path | None:
    """Writes a tiny copy of the dataset in its real layout; None for data that needs no files.

    Each holds two full training batches of every config (batch 128 after a sixth held out for
    validation; batch 64 after 2%), so that two optimizer steps of any model are two batches.
    """
    name = data_class.rsplit(".", 1)[-1]
    if name in ("MNIST", "FashionMNIST"):
        make_mnist(root, name, n_train=320, n_test=20)
    elif name == "StackedMNIST":
        make_mnist(root, "MNIST", n_train=320, n_test=20)
    elif name == "CIFAR10":
        make_cifar(root, per_batch=27)
    elif name == "CelebA":
        make_celeba(root, [0] * 130 + [1] * 10 + [2] * 10)
    else:
        return None
    return root


def test_there_are_configs():
    assert len(EXPERIMENTS) >= 30


@pytest.mark.parametrize("piece", sorted(PIECES))
def test_every_piece_folder_exists_and_holds_yaml(piece: str):
    # A folder named here but missing would silently count its experiments as pieces.
    assert (CONFIGS / piece).is_dir(), f"configs/{piece}/ is listed in PIECES but does not exist"
    assert list((CONFIGS / piece).glob("*.yaml")), f"configs/{piece}/ holds no YAML"


def test_every_top_level_config_folder_is_an_experiment_or_a_piece():
    folders = {p.name for p in CONFIGS.iterdir() if p.is_dir()}
    experiments = {p.relative_to(CONFIGS).parts[0] for p in EXPERIMENTS if p.parent != CONFIGS}
    assert folders == experiments | PIECES


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, s) for p, s in zip(module.parameters(), snapshot, strict=True))


@pytest.mark.usefixtures("no_network", "skip_md5")
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_trains_two_steps(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    root = _fake_root(data_class, tmp_path / "data")
    seen = {}
    original = LightningCLI._run_subcommand

    def spy(self, subcommand):
        # The networks as the YAML built them, just before `genlit fit` trains them.
        seen["before"] = {name: _snapshot(net) for name, net in self.model.declared_networks()}
        original(self, subcommand)
        seen["cli"] = self

    monkeypatch.setattr(LightningCLI, "_run_subcommand", spy)
    # Class coverage draws its 10,000 (26,000 on Stacked MNIST) samples whatever the data's
    # size; 64 show that it runs.
    measure = ClassCoverage.measure

    def fewer_samples(self, trainer, pl_module):
        self.num_samples = min(self.num_samples or 64, 64)
        return measure(self, trainer, pl_module)

    monkeypatch.setattr(ClassCoverage, "measure", fewer_samples)
    sibling = config.with_name("aeot.yaml")  # AE-OT-GAN's starting run, next to it in configs/
    if "features: inception" in config.read_text():
        # Every fit ends with an FID evaluation; Inception's weights are not on test machines.
        offline = tmp_path / config.name
        offline.write_text(config.read_text().replace("features: inception", "features: tiny.PooledFeatures"))
        config = offline
    # AE-OT fits its map when the fit completes: on a few codes here, to a loose tolerance.
    quick_ot = ["--model.init_args.ot_codes=64", "--model.init_args.ot_tolerance=0.1"]
    ot = quick_ot if "class_path: AEOT\n" in config.read_text() else []
    glann = "class_path: GLANN" in config.read_text()
    if "class_path: AEOTGAN" in config.read_text():
        # AE-OT-GAN starts from a finished AE-OT run of the same data.
        main(["fit", "--config", str(sibling), *quick_ot,
              *([f"--data.init_args.root={root}", "--data.init_args.download=false"] if root else []),
              "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
              "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              "--trainer.enable_checkpointing=true", f"--trainer.default_root_dir={tmp_path / 'aeot'}"])
        start = next((tmp_path / "aeot").rglob("*.ckpt"))
        ot = [f"--model.init_args.autoencoder_checkpoint={start}"]
    main([
        "fit", "--config", str(config), *ot,
        *([f"--data.init_args.root={root}", "--data.init_args.download=false"] if root else []),
        "--generator_steps=null", "--trainer.max_steps=2", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        # GLANN trains its generator in the GLO epochs and its mapper after: two steps of each.
        *(["--model.init_args.glo_epochs=1", "--trainer.max_epochs=2", "--trainer.max_steps=4"] if glann else []),
    ])
    model, trainer, before = seen["cli"].model, seen["cli"].trainer, seen["before"]
    assert before, f"{type(model).__name__} declares no networks"

    assert trainer.global_step == (4 if glann else 2)
    moved = {name for name, net in model.declared_networks() if _moved(net, before[name])}
    if type(model).__name__ == "AEOTGAN":
        # Loaded from the AE-OT run at setup, then kept fixed: its weights are that run's.
        state = torch.load(start, weights_only=True)["state_dict"]
        assert all(torch.equal(v, state[f"encoder.{k}"]) for k, v in model.encoder.state_dict().items())
        moved.discard("encoder")
    # Networks without weights (AE-OT's identity embedding) or kept fixed (AE-OT-GAN's encoder)
    # have nothing to move.
    expected = {name for name, net in model.declared_networks() if any(p.requires_grad for p in net.parameters())}
    if hasattr(model, "generator_updates"):
        # k critic steps come before the first generator step: with k >= 2, two optimizer steps
        # are two critic steps and the generator has not moved yet.
        per_step = model.optimizer_steps_per_generator_step
        assert model.generator_updates == 2 // per_step
        assert model.discriminator_updates == 2 - model.generator_updates
        if model.generator_updates == 0:
            expected.discard("generator")
    assert moved == expected
    for name, net in model.declared_networks():
        assert all(torch.isfinite(p).all() for p in net.parameters()), name


@pytest.mark.slow
def test_mnist_dcgan_trains_on_the_real_files(shared_data: Path, tmp_path: Path):
    import shutil

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
