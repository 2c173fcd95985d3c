"""Small networks, models and trainers shared by several test files (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from genlit.cli import main
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator


def mlp_nets() -> tuple[MLPGenerator, MLPDiscriminator]:
    """A generator and a discriminator for 2-D points, 16 wide and 2 deep."""
    return MLPGenerator(hidden_dim=16, num_layers=2), MLPDiscriminator(hidden_dim=16, num_layers=2)


def tiny_dcgan(size: int = 8, **kwargs) -> GAN:
    """A DCGAN for ``size`` x ``size`` grey images, 8 channels wide."""
    return GAN(DCGANGenerator(8, 1, size, 8), DCGANDiscriminator(1, size, 8), **kwargs)


def quick_trainer(tmp_path: Path, batches: int = 3) -> Trainer:
    """One epoch of ``batches`` training batches on the CPU, without validation or files."""
    return Trainer(
        max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu",
    )


def run_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Runs ``genlit ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


class PooledFeatures(torch.nn.Module):
    """A weight-free stand-in for Inception where its weights cannot be had: 4x4 pooled pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)  # (B, C * 16)
