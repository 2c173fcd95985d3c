"""A new model family in one file: a GAN with a third network, as a user or a new genlit family adds it.

It declares its extra network in ``networks`` and runs its own phase with ``run_phase``; the
hyperparameters, the freezing of the other networks in every phase and the checkpoint's
architecture check all come from that declaration, with no edit anywhere else.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from genlit.models import GAN
from genlit.models.optimizers import build_optimizer


class EnergyGAN(GAN):
    """A GAN that also fits an energy network to the real samples, in a phase of its own.

    Args:
        *args: As :class:`genlit.models.GAN`.
        energy: The extra network, samples to one value each.
        energy_optimizer: Its optimizer factory.
        **kwargs: As :class:`genlit.models.GAN`.
    """

    networks = (*GAN.networks, "energy")

    def __init__(
        self, *args: Any, energy: nn.Module, energy_optimizer: OptimizerCallable = torch.optim.Adam, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.energy = energy
        self.energy_optimizer = energy_optimizer
        self.phase_log: list[tuple[str, tuple[str, ...]]] = []

    def _frozen_now(self) -> tuple[str, ...]:
        return tuple(name for name, net in self.declared_networks()
                     if not any(p.requires_grad for p in net.parameters()))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [*super().configure_optimizers(),
                build_optimizer(self.energy_optimizer, self.energy.parameters(), "energy_optimizer")]

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        self.phase_log.append(("d_loss", self._frozen_now()))
        return super().discriminator_step(real)

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        self.phase_log.append(("g_loss", self._frozen_now()))
        return super().generator_step(batch_size)

    def energy_step(self, real: Tensor) -> dict[str, Tensor]:
        self.phase_log.append(("energy", self._frozen_now()))
        return {"loss": self.energy(real).square().mean()}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        super().training_step(batch, batch_idx)
        real = self.unpack(batch)
        self.run_phase("energy", self.optimizers()[2], self.energy, lambda: self.energy_step(real))
