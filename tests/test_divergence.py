"""The divergence guard: a non-finite loss stops the run in one line and keeps the last good
checkpoint, in Python and through the CLI."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.toy import GaussianRing
from genlit.cli import main
from genlit.errors import TrainingDiverged
from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

REPO = Path(__file__).resolve().parents[1]
adam = functools.partial(torch.optim.Adam, lr=1e-3)


class PoisonGenerator(Callback):
    """Sets the generator's weights to NaN before the batch at ``step`` (optimizer steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.generator.parameters():
                    p.fill_(float("nan"))


def diverging_fit(tmp_path: Path, fault: Callback) -> str:
    """The one-line message of a ring GAN fit, checkpointed every 4 steps, that ``fault`` spoils."""
    seed_everything(0)
    model = GAN(MLPGenerator(hidden_dim=16), MLPDiscriminator(hidden_dim=16), adam, adam)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True)
    trainer = Trainer(
        max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[checkpoints, fault],
    )
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(model, datamodule=GaussianRing(batch_size=16, samples_per_epoch=320))
    return str(info.value)


def test_nan_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    message = diverging_fit(tmp_path, PoisonGenerator(step=10))
    assert "\n" not in message
    assert "train/d_loss is not finite at step 10" in message
    assert "learning rate" in message and str(tmp_path / "last.ckpt") in message
    # The last good checkpoint (step 8) loads, and its weights are finite.
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 8
    restored = GAN(MLPGenerator(hidden_dim=16), MLPDiscriminator(hidden_dim=16), adam, adam)
    restored.load_state_dict(checkpoint["state_dict"])
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_divergence_through_the_cli_is_one_line(tmp_path, capsys):
    # A learning rate of 1e30 makes the losses overflow within a few steps.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/toy/ring_nsgan.yaml"), "--generator_steps=200",
              "--model.init_args.discriminator_optimizer.init_args.lr=1e30",
              "--model.init_args.generator_optimizer.init_args.lr=1e30",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genlit: error:")]
    assert len(lines) == 1 and "training diverged" in lines[0], err[-2000:]
    assert "Traceback" not in err


class Inflate(Callback):
    """After the batch at ``step`` multiplies the generator's weights by ``factor``: still finite,
    the losses computed so far finite, but no sample from the network is (a learning rate of
    1e38 does this in one Adam step)."""

    def __init__(self, step: int, factor: float = 1e30) -> None:
        self.step, self.factor = step, factor

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.generator.parameters():
                    p.mul_(self.factor)


def test_weights_without_a_finite_sample_are_never_checkpointed(tmp_path):
    # Inflate runs before the checkpoint callback at the same batch end (Lightning puts
    # checkpoint callbacks last): the weights of step 8 are the ones about to be written.
    message = diverging_fit(tmp_path, Inflate(step=8))
    assert "\n" not in message
    assert "samples drawn from the weights are not finite" in message and "at step 8" in message
    assert f"last good checkpoint: {tmp_path / 'last.ckpt'}" in message
    # The file on disk is still step 4's, and it samples finite points.
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    restored = GAN(MLPGenerator(hidden_dim=16), MLPDiscriminator(hidden_dim=16), adam, adam)
    restored.load_state_dict(checkpoint["state_dict"])
    assert torch.isfinite(restored.sample(64)).all()


def test_nan_weights_are_never_checkpointed_and_the_message_names_no_missing_file(tmp_path):
    # NaN weights set at a batch end, before any loss sees them: only the checkpoint check
    # can catch them. No checkpoint exists yet, and the message says so.
    message = diverging_fit(tmp_path, Inflate(step=4, factor=float("nan")))
    assert "the weights are not finite (generator." in message and "at step 4" in message
    assert "no checkpoint of this run was written" in message
    assert not list(tmp_path.iterdir())
