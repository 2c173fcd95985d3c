"""The speed options: channels-last layout, in-place compilation, the eager critic under a penalty."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
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


class _BeforeStep(Callback):
    """Overrides a step hook, so Lightning's own backward and optimizer step must run."""

    def __init__(self) -> None:
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1


@pytest.mark.parametrize("family", ["gan", "wgan_gp"])
def test_direct_steps_train_bitwise_as_lightnings_steps(family, monkeypatch):
    from genlit import _compat

    direct_steps = []
    step_directly = _compat.step_directly
    monkeypatch.setattr(_compat, "step_directly", lambda opt: (direct_steps.append(1), step_directly(opt)))

    def build():
        seed_everything(0)
        if family == "gan":
            return GAN(*nets(), adam, adam)
        return WGANGP(*nets(batch_norm=False), adam, adam, n_critic=2)

    direct, hooked = build(), build()
    seed_everything(1)
    direct_trainer = fit(direct, steps=6)
    assert len(direct_steps) == 6
    callback = _BeforeStep()
    seed_everything(1)
    trainer = Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[callback])
    trainer.fit(hooked, datamodule=Digits(image_size=16, batch_size=16))
    assert callback.calls == 6  # the hook ran: this model took Lightning's path
    assert len(direct_steps) == 6
    assert direct_trainer.global_step == trainer.global_step == 6
    assert direct.generator_updates == hooked.generator_updates
    for key, value in direct.state_dict().items():
        assert torch.equal(hooked.state_dict()[key], value), key
