"""Divergence guard, interrupts, mixed precision."""

from __future__ import annotations

import functools
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.toy import GaussianRing
from genlit.cli import main
from genlit.errors import TrainingDiverged
from genlit.losses import gradient_penalty
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator
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


def test_nan_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    seed_everything(0)
    model = GAN(MLPGenerator(hidden_dim=16), MLPDiscriminator(hidden_dim=16), adam, adam)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True)
    trainer = Trainer(
        max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
        callbacks=[checkpoints, PoisonGenerator(step=10)],
    )
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(model, datamodule=GaussianRing(batch_size=16, samples_per_epoch=320))
    message = str(info.value)
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


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_an_interrupt_leaves_a_checkpoint_that_resumes_to_the_end(tmp_path, stop):
    command = [sys.executable, "-m", "genlit", "fit", "--config", "configs/toy/ring_nsgan.yaml",
               f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
               "--trainer.check_val_every_n_epoch=1000"]
    run = subprocess.Popen([*command, "--generator_steps=100000"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "toy" / "ring_nsgan" / "version_0" / "hparams.yaml"
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    time.sleep(2)  # mid-epoch, a few hundred steps in
    run.send_signal(stop)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    match = re.search(r"interrupted at global step (\d+); saved (\S+);", err)
    assert match, err[-2000:]
    stopped, saved = int(match.group(1)), Path(match.group(2))
    assert saved.name == "last.ckpt" and saved.exists() and stopped > 0
    assert torch.load(saved, weights_only=False)["global_step"] == stopped
    # Resume with a budget a little past the interruption: the run completes it.
    budget = stopped // 2 + 20
    done = subprocess.run([*command, f"--generator_steps={budget}", "--ckpt_path=last"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {saved}" in done.stdout
    assert f"finished at global step {2 * budget} ({budget} generator steps)" in done.stdout


def test_gradient_penalty_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    critic = DCGANDiscriminator(channels=1, image_size=16, width=8, batch_norm=False)
    real, fake = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    eps = torch.rand(8)
    reference = gradient_penalty(critic, real, fake, eps=eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_penalty(critic, real.bfloat16(), fake.bfloat16(), eps=eps)
    assert mixed.dtype == torch.float32
    # Only the inputs' rounding to bf16 differs (the penalty itself runs in fp32).
    torch.testing.assert_close(mixed, reference, rtol=2e-2, atol=1e-3)
    weights = [p for p in critic.parameters() if p.dim() > 1]
    grads = torch.autograd.grad(reference, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads_mixed = torch.autograd.grad(gradient_penalty(critic, real, fake, eps=eps), weights)
    # Same fp32 inputs: autocast does not reach inside the penalty, so the gradients are equal.
    for a, b in zip(grads, grads_mixed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


MODELS = ["mmgan", "nsgan", "lsgan", "wgan", "wgan_gp", "ae", "vae", "wae_mmd", "wae_gan"]


@pytest.mark.parametrize("name", MODELS)
def test_bf16_mixed_trains_every_model_with_finite_losses(name, tmp_path):
    from genlit.cli import main

    seen = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    import genlit.cli

    original = genlit.cli.GenlitCLI.instantiate_trainer

    def with_record(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.append(Record())
        return trainer

    genlit.cli.GenlitCLI.instantiate_trainer = with_record
    try:
        main(["fit", "--config", f"configs/digits/{name}.yaml", "--generator_steps=4",
              "--trainer.precision=bf16-mixed", "--trainer.log_every_n_steps=1",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--trainer.limit_val_batches=0", "--trainer.callbacks=[]"])
    finally:
        genlit.cli.GenlitCLI.instantiate_trainer = original
    losses = {k: v for k, v in seen.items() if "loss" in k}
    assert losses, seen
    assert all(torch.isfinite(torch.tensor(v)) for v in seen.values()), seen
