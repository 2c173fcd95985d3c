"""A user's own datamodule and model, named by import path in a test config."""

import math

import torch

from datamodules.toy import ToyDataModule
from genlit.callbacks.schedule import EvaluationSchedule, ScheduledEvaluation
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


class FailingEvaluation(ScheduledEvaluation):
    """An evaluation that fails at generator step ``at``: a stand-in for a broken metric, a full
    cache disk or an unreachable tracker."""

    def __init__(self, at: int = 3) -> None:
        self.at = at
        self.schedule = EvaluationSchedule(every_n_epochs=None, every_n_steps=at)

    def run(self, trainer, pl_module, in_training):
        raise RuntimeError(f"the metric server is unreachable (step {self.at})")
