"""DDP with two CPU processes (gloo): every family trains with plain --trainer.strategy=ddp, and
the FID callback gives the value of one process on the same samples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
       "--trainer.enable_progress_bar=false"]

CASES = {
    # Toy epochs of 8 batches: the mode metrics run (each rank its share, gathered) after epoch 1.
    "gan": ("configs/toy/ring_nsgan.yaml", ["--generator_steps=10", "--data.init_args.samples_per_epoch=2048",
                                             "--trainer.check_val_every_n_epoch=1"]),
    "wgan_gp": ("configs/toy/ring_wgan_gp.yaml", ["--generator_steps=3", "--data.init_args.samples_per_epoch=2048",
                                                   "--trainer.check_val_every_n_epoch=1"]),
    "vae": ("configs/digits/vae.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
    "wae_gan": ("configs/digits/wae_gan.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
}


@pytest.mark.parametrize("case", CASES)
def test_plain_ddp_trains_two_network_models(case, tmp_path):
    config, extra = CASES[case]
    result = subprocess.run(
        [sys.executable, "-m", "genlit", "fit", "--config", config, *DDP, *extra,
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unused" not in result.stderr
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert "finished at global step" in result.stdout
    if case == "gan":
        assert re.search(r"val/modes\s+\d", result.stdout), result.stdout


def test_fid_under_ddp_equals_one_process(tmp_path):
    values = {}
    for devices in (1, 2):
        result = subprocess.run(
            [sys.executable, "tests/ddp_fid_script.py", str(devices), str(tmp_path / "cache")],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        fid, kid = re.search(r"FID=(\S+) KID=(\S+)", result.stdout).groups()
        values[devices] = (float(fid), float(kid))
    assert values[1][0] > 1.0  # a real distance, not a degenerate zero
    assert values[2][0] == pytest.approx(values[1][0], rel=1e-4)
    # KID averages over random subsets, and the gathered features come in another order: the
    # same estimator on the same set, not the same subsets.
    assert values[2][1] == pytest.approx(values[1][1], rel=2e-2)
