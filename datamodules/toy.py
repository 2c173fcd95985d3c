"""Two-dimensional toy distributions, the test beds of mode collapse and of the Wasserstein GAN.

Every epoch draws ``samples_per_epoch`` fresh points (seeded by ``seed``, the epoch and the
process rank, so runs repeat exactly and DDP ranks see different points). The whole epoch is
drawn at once and sliced into batches: data costs next to nothing per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules._resume import batches_done


class _EpochBatches:
    """Yields the batches of one freshly drawn epoch each time it is iterated.

    The training loader itself: Lightning takes any iterable with a length. Being no
    ``DataLoader`` it spawns no workers, draws no base seed from any generator, and raises no
    "``IterableDataset`` has ``__len__``" warning (which is about worker copies).
    """

    def __init__(self, datamodule: ToyDataModule) -> None:
        self.datamodule = datamodule
        self._iterations = 0

    def __len__(self) -> int:
        return self.datamodule.samples_per_epoch // self.datamodule.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        dm = self.datamodule
        trainer = dm.trainer
        epoch = trainer.current_epoch if trainer is not None else self._iterations
        rank = trainer.global_rank if trainer is not None else 0
        self._iterations += 1
        generator = torch.Generator().manual_seed(hash((dm.seed, epoch, rank)) % 2**62)
        points = dm.sample(len(self) * dm.batch_size, generator)  # (N, 2)
        # A run resumed mid-epoch continues with the batches it had not trained yet.
        yield from points.split(dm.batch_size)[batches_done(trainer) :]


class ToyDataModule(LightningDataModule):
    """Base of the 2-D distributions: infinite sampling, a fixed validation set.

    Subclasses implement :meth:`sample` and, when the distribution has discrete modes, set
    ``centers`` (K, 2) and ``std`` so the mode metrics can count modes.

    Args:
        batch_size: Points per batch.
        samples_per_epoch: Fresh points drawn for every training epoch.
        val_samples: Size of the fixed validation set (also the reference for plots).
        seed: Seed of every draw.
    """

    data_dim = 2
    centers: Tensor | None = None
    std: float | None = None

    def __init__(
        self,
        batch_size: int = 256,
        samples_per_epoch: int = 25_600,
        val_samples: int = 2_500,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if samples_per_epoch < batch_size:
            raise ValueError(
                f"samples_per_epoch ({samples_per_epoch}) must be at least batch_size ({batch_size})"
            )
        if val_samples < 1:
            raise ValueError(f"val_samples must be >= 1, got {val_samples}")
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self.seed = seed
        self._val: Tensor | None = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` points, shape ``(n, 2)``."""
        raise NotImplementedError

    @property
    def val_data(self) -> Tensor:
        """The fixed validation points, shape ``(val_samples, 2)``."""
        if self._val is None:
            self._val = self.sample(self.val_samples, torch.Generator().manual_seed(self.seed + 1))
        return self._val

    def train_dataloader(self) -> _EpochBatches:
        """Batches of ``(batch_size, 2)`` points drawn afresh every epoch, global RNG untouched."""
        return _EpochBatches(self)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_data, batch_size=self.val_samples)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class _GaussianMixture(ToyDataModule):
    """Equal-weight isotropic Gaussians of standard deviation ``std`` around ``centers``.

    Args:
        std: Standard deviation of every Gaussian. None: the distribution's default, 0.02 for
            GaussianRing and 0.05 for GaussianGrid.
    """

    default_std: ClassVar[float]

    def __init__(self, std: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        std = self.default_std if std is None else std
        if std <= 0:
            raise ValueError(f"{type(self).__name__} needs std > 0, got {std}")
        self.std = std

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        assert self.centers is not None and self.std is not None
        which = torch.randint(len(self.centers), (n,), generator=generator)
        return self.centers[which] + self.std * torch.randn(n, 2, generator=generator)


class GaussianRing(_GaussianMixture):
    """A ring of Gaussians (8 of them, radius 2, std 0.02 as in the Unrolled GAN paper).

    Args:
        n_modes: Number of Gaussians on the ring.
        radius: Radius of the ring.
    """

    default_std = 0.02

    def __init__(self, n_modes: int = 8, radius: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_modes < 1 or radius <= 0:
            raise ValueError("GaussianRing needs n_modes >= 1 and radius > 0")
        angles = torch.arange(n_modes) * (2 * math.pi / n_modes)
        self.centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)


class GaussianGrid(_GaussianMixture):
    """A square grid of Gaussians (5 x 5 at spacing 2, std 0.05 as in VEEGAN and PacGAN).

    Args:
        side: Gaussians per side of the grid (``side**2`` modes).
        spacing: Distance between neighbouring centres; the grid is centred on the origin.
    """

    default_std = 0.05

    def __init__(self, side: int = 5, spacing: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if side < 1 or spacing <= 0:
            raise ValueError("GaussianGrid needs side >= 1 and spacing > 0")
        ticks = (torch.arange(side) - (side - 1) / 2) * spacing
        self.centers = torch.cartesian_prod(ticks, ticks)  # (side**2, 2)


class SwissRoll(ToyDataModule):
    """The 2-D swiss roll of the WGAN-GP toy experiments (scikit-learn's, divided by 7.5).

    Args:
        noise: Standard deviation of the Gaussian noise added before scaling.
    """

    def __init__(self, noise: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise = noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))  # (n,)
        roll = torch.stack([t * t.cos(), t * t.sin()], dim=1)  # (n, 2)
        return (roll + self.noise * torch.randn(n, 2, generator=generator)) / 7.5


class ParallelLines(ToyDataModule):
    """P0 of Arjovsky et al.'s Example 1: the points ``(0, Z)``, ``Z ~ U[0, 1]``.

    A generator ``g(z) = (theta, z)`` has the same law only at ``theta = 0``; elsewhere the
    supports are disjoint, JS is log 2 and KL infinite, while W1 = |theta|.

    Args:
        x: The abscissa of the line (0 in the paper).
    """

    def __init__(self, x: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.x = x

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.rand(n, generator=generator)  # (n,)
        return torch.stack([torch.full_like(z, self.x), z], dim=1)  # (n, 2)
