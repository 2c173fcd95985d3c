"""What is refused before any training: impossible hyperparameters, a batch-norm critic for
WGAN-GP, and data whose images do not fit the networks (in Python and as one CLI line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import mlp_nets, quick_trainer, tiny_dcgan

from datamodules.images import Digits
from genlit.cli import main
from genlit.errors import GenlitError
from genlit.models import GAN, WGAN, WGANGP
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from genlit.networks.mlp import MLPGenerator

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("factory", [
    lambda: GAN(*mlp_nets(), k=0),
    lambda: WGAN(*mlp_nets(), n_critic=0),
    lambda: WGAN(*mlp_nets(), clip=0.0),
    lambda: WGANGP(*mlp_nets(), gp_weight=-1.0),
])
def test_impossible_hyperparameters_are_refused(factory):
    with pytest.raises(ValueError, match="must be"):
        factory()


def test_wgan_gp_rejects_a_critic_with_batch_norm():
    critic = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="batch norm"):
        WGANGP(MLPGenerator(), critic)


def test_critic_with_batch_norm_is_refused_for_wgan_gp():
    with pytest.raises(ValueError, match="batch_norm"):
        WGANGP(DCGANGenerator(8, 1, 16, 8), DCGANDiscriminator(1, 16, 8, batch_norm=True))


def test_image_size_mismatch_fails_before_training(tmp_path):
    model = tiny_dcgan(size=16)
    with pytest.raises(GenlitError, match=r"image_size=8 .* image_size=16"):
        quick_trainer(tmp_path).fit(model, Digits(image_size=8, batch_size=32))
    assert model.discriminator_updates == 0


def test_cli_mismatch_is_one_line(tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/digits/nsgan.yaml"), "--data.init_args.image_size=28",
              "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("genlit: error: Digits gives image_size=28")
    assert "model.init_args.generator.init_args.image_size" in last
