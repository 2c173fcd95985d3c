"""A user's own datamodule and model, named by import path in a test config."""

import math

import torch

from datamodules.toy import ToyDataModule
from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator


class Circle(ToyDataModule):
    """Points on the unit circle."""

    def sample(self, n, generator=None):
        angle = 2 * math.pi * torch.rand(n, generator=generator)
        return torch.stack([angle.cos(), angle.sin()], dim=1)


class TinyGAN(GAN):
    """A GAN that builds its own small networks."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__(MLPGenerator(hidden_dim=hidden), MLPDiscriminator(hidden_dim=hidden))
