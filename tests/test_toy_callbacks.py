"""ModeCoverage and ScatterPlot: when they run, what they log, and that training ignores them."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback, Trainer

from datamodules.toy import GaussianRing
from genlit.callbacks import ModeCoverage, ScatterPlot
from genlit.callbacks import toy as toy_callbacks
from genlit.metrics.modes import mode_statistics
from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

BATCHES = 4  # per epoch; a GAN with k = 1 makes 2 optimizer steps per batch


def _fit(tmp_path, callbacks, **budget) -> GAN:
    L.seed_everything(0)
    model = GAN(MLPGenerator(hidden_dim=16), MLPDiscriminator(hidden_dim=16))
    trainer = Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu", callbacks=callbacks, num_sanity_val_steps=0, **budget,
    )
    trainer.fit(model, GaussianRing(batch_size=32, samples_per_epoch=32 * BATCHES))
    return model


@pytest.mark.parametrize(
    "budget",
    [{"max_epochs": 5}, {"max_epochs": None, "max_steps": 5 * BATCHES * 2}],
    ids=["epoch-budget", "step-budget"],
)
def test_every_n_epochs_and_the_last_epoch(tmp_path, budget, monkeypatch):
    # Evaluations at epochs 3 and 6 (1-based) would be due; the run ends after epoch 5, which gets
    # one too. A step budget (Lightning's max_epochs = -1) must not make every epoch "the last".
    scored: list[int] = []
    original = toy_callbacks.mode_statistics

    def spy(*args, **kwargs):
        scored.append(trainer_of["t"].current_epoch)
        return original(*args, **kwargs)

    class Remember(Callback):
        def on_fit_start(self, trainer, pl_module):
            trainer_of["t"] = trainer

    trainer_of: dict = {}
    monkeypatch.setattr(toy_callbacks, "mode_statistics", spy)
    plot = ScatterPlot(num_samples=50, every_n_epochs=3)
    _fit(tmp_path, [Remember(), ModeCoverage(num_samples=100, every_n_epochs=3), plot], **budget)
    assert scored == [2, 4]
    # Named by generator step: 3 and 5 epochs of 4 batches, one generator step a batch.
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000012.png", "step_000020.png"]
    assert plot.last_path == tmp_path / "samples" / "step_000020.png"


def test_logged_values_are_the_mode_statistics_of_the_seeded_samples(tmp_path):
    coverage = ModeCoverage(num_samples=300, seed=7)
    model = _fit(tmp_path, [coverage], max_epochs=1)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        expected = mode_statistics(model.sample(300), GaussianRing().centers, GaussianRing().std)
    metrics = model.trainer.callback_metrics
    assert metrics["val/modes"].item() == expected.modes
    torch.testing.assert_close(metrics["val/high_quality"].item(), expected.high_quality)


def test_evaluation_callbacks_leave_training_unchanged(tmp_path):
    plain = _fit(tmp_path / "a", [], max_epochs=2)
    watched = _fit(tmp_path / "b", [ModeCoverage(num_samples=100), ScatterPlot(num_samples=50)], max_epochs=2)
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
