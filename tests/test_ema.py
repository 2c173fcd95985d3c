"""The EMA generator: its decay, that sample() uses it, and impossible decays."""

from __future__ import annotations

import pytest
import torch
from tiny import quick_trainer, tiny_dcgan

from datamodules.images import Digits


def test_ema_follows_the_generator_with_the_stated_decay(tmp_path):
    torch.manual_seed(0)
    model = tiny_dcgan(ema_decay=0.9)
    before = [p.clone() for p in model.generator_ema.module.parameters()]
    trainer = quick_trainer(tmp_path, batches=1)
    trainer.fit(model, Digits(image_size=8, batch_size=32))
    assert model.generator_updates == 1
    # The first update of torch's AveragedModel copies the weights; check with a second manual one.
    ema = model.generator_ema.module
    assert all(torch.equal(p, q) for p, q in zip(ema.parameters(), model.generator.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(ema.parameters(), before, strict=True))
    old = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.generator_ema.update_parameters(model.generator)
    for p_ema, p_old, p_new in zip(ema.parameters(), old, model.generator.parameters(), strict=True):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p_new)


def test_sample_uses_the_averaged_generator():
    torch.manual_seed(0)
    model = tiny_dcgan(ema_decay=0.99)
    with torch.no_grad():
        for p in model.generator_ema.module.parameters():
            p.zero_()  # an all-zero generator outputs tanh(0) = 0 everywhere
    assert torch.equal(model.sample(4), torch.zeros(4, 1, 8, 8))
    assert not torch.equal(tiny_dcgan().sample(4), torch.zeros(4, 1, 8, 8))


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5])
def test_impossible_ema_decay(bad):
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_dcgan(ema_decay=bad)
