"""SampleGrid: fixed-noise grids with make_grid's geometry that leave training randomness alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.images import Digits
from datamodules.toy import GaussianRing
from genlit.callbacks import SampleGrid
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator


def tiny_gan() -> GAN:
    return GAN(
        DCGANGenerator(latent_dim=8, channels=1, image_size=8, width=8),
        DCGANDiscriminator(channels=1, image_size=8, width=8),
    )


def fit(
    model: GAN, datamodule: L.LightningDataModule, root: Path, callbacks: list, epochs: int = 2
) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule)
    return trainer


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DCGAN fitted 2 epochs x 3 batches on 8x8 digits with a 12-image, 5-per-row grid."""
    root = tmp_path_factory.mktemp("grid")
    L.seed_everything(0)
    model = tiny_gan()
    grid = SampleGrid(num_samples=12, nrow=5)
    trainer = fit(model, Digits(image_size=8, batch_size=32), root, [grid])
    return trainer, model, grid, root


def test_grid_png_every_epoch_with_make_grid_geometry(trained):
    trainer, _, grid, root = trained
    files = sorted(p.name for p in (root / "samples").iterdir())
    assert files == [
        "grid_step_000003.png",
        "grid_step_000006.png",
    ]  # by generator step (one a batch, 3 batches an epoch); the fit-end grid is not redrawn
    assert grid.last_path == root / "samples" / "grid_step_000006.png"
    # 12 images of 8x8, 5 per row, padding 2: 3 rows -> 3 * (8 + 2) + 2 high, 5 * (8 + 2) + 2 wide.
    assert Image.open(grid.last_path).size == (52, 32)


def test_grid_maps_minus_one_one_to_pixels(trained):
    trainer, model, grid, _ = trained
    first = grid.fixed_samples(model)[0, 0]  # (8, 8) in [-1, 1]
    expected = torch.floor((first.clamp(-1, 1) + 1) / 2 * 255 + 0.5).to(torch.uint8).numpy()
    image = pixels(grid.last_path)
    np.testing.assert_allclose(image[2:10, 2:10, 0], expected, atol=1)  # top-left tile
    assert (image[:2] == 0).all() and (image[:, :2] == 0).all()  # black padding


def test_same_weights_same_grid_whatever_the_global_rng(trained, tmp_path):
    trainer, model, grid, _ = trained
    before = pixels(grid.last_path)
    torch.manual_seed(1234)  # a different global state must not change the fixed noise
    torch.randn(1000)
    again = grid.draw(trainer, model)
    np.testing.assert_array_equal(pixels(again), before)
    other_seed = SampleGrid(num_samples=12, nrow=5, seed=1).draw(trainer, model)
    assert not np.array_equal(pixels(other_seed), before)


@pytest.mark.parametrize(
    ("num_samples", "nrow", "size"), [(8, 8, (82, 12)), (4, 8, (42, 12)), (9, 3, (32, 32))]
)
def test_grid_size_follows_nrow(trained, num_samples, nrow, size):
    trainer, model, _, _ = trained
    path = SampleGrid(num_samples=num_samples, nrow=nrow).draw(trainer, model, step=99)
    assert Image.open(path).size == size  # (W, H)


def test_drawing_leaves_the_global_rng_state_alone(trained):
    trainer, model, grid, _ = trained
    state = torch.get_rng_state()
    grid.draw(trainer, model)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_is_the_same_with_or_without_grids(tmp_path):
    weights = []
    for callbacks in ([], [SampleGrid(num_samples=16, nrow=4)]):
        L.seed_everything(0)
        model = tiny_gan()
        fit(model, Digits(image_size=8, batch_size=32), tmp_path, callbacks)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert any((tmp_path / "samples").iterdir())
    for without, with_grids in zip(*weights, strict=True):
        torch.testing.assert_close(with_grids, without, rtol=0, atol=0)


def test_every_n_epochs_and_a_last_grid_at_the_end_of_fit(tmp_path):
    L.seed_everything(0)
    grid = SampleGrid(num_samples=4, nrow=2, every_n_epochs=2)
    fit(tiny_gan(), Digits(image_size=8, batch_size=32), tmp_path, [grid], epochs=3)
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["grid_step_000006.png", "grid_step_000009.png"]


def test_toy_points_give_no_grid_and_one_warning(tmp_path):
    L.seed_everything(0)
    model = GAN(MLPGenerator(latent_dim=2, hidden_dim=16), MLPDiscriminator(hidden_dim=16))
    grid = SampleGrid(num_samples=16, nrow=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, GaussianRing(batch_size=64, samples_per_epoch=192), tmp_path, [grid])
    messages = [str(w.message) for w in caught if "SampleGrid" in str(w.message)]
    assert len(messages) == 1 and "not images" in messages[0]
    assert grid.last_path is None
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("bad", [{"num_samples": 0}, {"nrow": 0}, {"every_n_epochs": 0}])
def test_rejects_empty_grids(bad):
    with pytest.raises(ValueError, match="SampleGrid"):
        SampleGrid(**bad)
