"""The speed options: channels-last layout, in-place compilation, the eager critic under a penalty."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from datamodules.images import Digits
from genlit.models import GAN, WGANGP
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator

adam = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


def nets(batch_norm: bool = True):
    return (
        DCGANGenerator(latent_dim=16, channels=1, image_size=16, width=8),
        DCGANDiscriminator(channels=1, image_size=16, width=8, batch_norm=batch_norm),
    )


def fit(model, steps: int = 4) -> Trainer:
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=Digits(image_size=16, batch_size=16))
    return trainer


def test_channels_last_trains_the_same_function():
    seed_everything(0)
    plain = GAN(*nets(), adam, adam)
    seed_everything(0)
    layout = GAN(*nets(), adam, adam, channels_last=True)
    layout.load_state_dict(plain.state_dict())
    seed_everything(1)
    fit(plain)
    seed_everything(1)
    fit(layout)
    conv = next(m for m in layout.discriminator.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(layout.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compile_options_compile_in_place(monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    model = GAN(*nets(), adam, adam, compile_generator=True, compile_discriminator=True)
    keys = set(model.state_dict())
    fit(model, steps=2)
    assert compiled == ["DCGANGenerator", "DCGANDiscriminator"]
    assert set(model.state_dict()) == keys  # checkpoints do not change


def test_gradient_penalty_keeps_the_critic_eager(monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    model = WGANGP(*nets(batch_norm=False), adam, adam, compile_generator=True, compile_discriminator=True)
    with pytest.warns(UserWarning, match="critic stays eager"):
        fit(model, steps=2)
    assert compiled == ["DCGANGenerator"]
