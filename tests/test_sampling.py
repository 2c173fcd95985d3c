"""``GenerativeModel.sample``: n detached samples, and the train/eval mode it found restored."""

from __future__ import annotations

from tiny import mlp_nets

from genlit.models import GAN


def test_sample_shape_and_mode():
    model = GAN(*mlp_nets())
    model.train()
    x = model.sample(7)
    assert x.shape == (7, 2) and not x.requires_grad
    assert model.generator.training  # sample() restores the mode it found
