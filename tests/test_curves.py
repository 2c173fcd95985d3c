"""Curves: curves.png from the run's metrics.csv at the end of fit, never a failed run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from datamodules.images import Digits
from genlit.callbacks import Curves
from genlit.callbacks.curves import plot_curves, read_metrics
from genlit.callbacks.schedule import GeneratorStepAxis
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator

BATCHES = 6  # per epoch, 2 epochs


def fit(root: Path, callbacks: list, logger=None, k: int = 2) -> tuple[Trainer, GAN]:
    torch.manual_seed(0)
    model = GAN(DCGANGenerator(8, 1, 8, 8), DCGANDiscriminator(1, 8, 8), k=k)
    trainer = Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=BATCHES, limit_val_batches=0,
        logger=logger if logger is not None else False, log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks,
    )
    trainer.fit(model, Digits(image_size=8, batch_size=32))
    return trainer, model


@pytest.mark.parametrize("step_axis", [False, True], ids=["lightning_steps", "generator_steps"])
def test_curves_png_against_generator_steps_after_a_fit_with_a_csv_logger(tmp_path, step_axis):
    curves = Curves()
    logger = CSVLogger(tmp_path, name="run")
    callbacks = [curves, *([GeneratorStepAxis()] if step_axis else [])]
    trainer, model = fit(tmp_path, callbacks, logger)
    assert trainer.state.finished
    path = Path(logger.log_dir) / "curves.png"
    assert curves.last_path == path and path.is_file()
    assert Image.open(path).size == (700, 260)  # one group (losses): 7 x 2.6 inches at 100 dpi
    # k = 2 discriminator steps per generator step: 12 batches are 6 generator steps, whether
    # the CSV counts batches (Lightning) or generator steps (GeneratorStepAxis).
    assert model.generator_updates == 2 * BATCHES // 2
    scale = curves.step_scale(trainer, model)
    assert scale == (1.0 if step_axis else 0.5)
    series = read_metrics(Path(logger.log_dir) / "metrics.csv", scale)
    assert {"train/d_loss", "train/g_loss"} <= set(series)
    steps = series["train/d_loss"][0]
    assert max(steps) <= model.generator_updates and max(steps) >= model.generator_updates - 1


def test_one_subplot_per_group_with_values(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train/d_loss,train/g_loss,val/fid,val/kid_mean,val/modes,val/high_quality\n"
        "0,0,1.0,2.0,,,,\n"
        "0,1,0.9,1.8,,,,\n"
        "0,1,,,40.0,0.05,3,0.5\n"
        "1,3,0.8,1.5,,,,\n"
        "1,3,,,nan,0.04,5,0.7\n"
    )
    series = read_metrics(csv, step_scale=10)
    assert series["train/d_loss"] == ([0.0, 10.0, 30.0], [1.0, 0.9, 0.8])
    assert series["val/fid"] == ([10.0], [40.0])  # empty and non-finite cells are skipped
    assert series["val/modes"] == ([10.0, 30.0], [3.0, 5.0])
    path = tmp_path / "curves.png"
    assert plot_curves(series, path) == ["losses", "FID / KID", "modes"]
    assert Image.open(path).size == (700, 3 * 260)
    only_fid = {"val/kid_mean": series["val/kid_mean"]}
    assert plot_curves(only_fid, tmp_path / "kid.png") == ["FID / KID"]
    assert plot_curves({}, tmp_path / "none.png") == [] and not (tmp_path / "none.png").exists()


def test_without_a_csv_logger_nothing_is_drawn_and_nothing_fails(tmp_path, caplog):
    curves = Curves()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        trainer, _ = fit(tmp_path, [curves])
    assert trainer.state.finished and curves.last_path is None
    assert not list(tmp_path.rglob("curves.png"))
    assert not [w for w in caught if "Curves" in str(w.message)]
    assert [r.message for r in caplog.records if r.message.startswith("Curves:")] == [
        "Curves: no CSVLogger among the loggers, so no curves.png"
    ]


def test_a_plotting_failure_is_one_warning_and_the_fit_finishes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas today")

    monkeypatch.setattr(Figure, "savefig", broken)
    curves = Curves()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, model = fit(tmp_path, [curves], CSVLogger(tmp_path, name="run"))
    messages = [str(w.message) for w in caught if "Curves" in str(w.message)]
    assert messages == ["Curves: could not draw curves.png (RuntimeError: no canvas today)"]
    assert trainer.state.finished and model.generator_updates == BATCHES
    assert curves.last_path is None and not list(tmp_path.rglob("curves.png"))
