"""Precision, recall, density and coverage of generated features against real ones.

FID mixes fidelity and diversity; these separate them with k-nearest-neighbour balls in a
feature space (the FID feature network's):

* **precision** (Kynkaanniemi et al. 2019): the share of generated samples inside some real
  sample's k-NN ball: fidelity.
* **recall**: the share of real samples inside some generated sample's ball: diversity.
* **density** (Naeem et al. 2020): how many real balls a generated sample falls in, on
  average, over k; about 1 for samples distributed like the data, robust to real outliers.
* **coverage**: the share of real samples whose ball holds at least one generated sample.

Precision and recall come from torch-fidelity (through :mod:`genlit._compat`); density and
coverage, which no installed library computes, are written here from Naeem et al.'s
definitions (their reference code is the ``prdc`` package, which uses ``<`` where
torch-fidelity uses ``<=``; genlit follows torch-fidelity's ``<=`` for all four).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from genlit import _compat

__all__ = ["ManifoldStats", "knn_radii", "manifold_statistics"]

_CHUNK = 2048  # rows of a distance matrix computed at once


class ManifoldStats(NamedTuple):
    """Precision, recall, density and coverage of one set of samples."""

    precision: float
    recall: float
    density: float
    coverage: float


def knn_radii(features: Tensor, nearest_k: int) -> Tensor:
    """Distance of every point to its k-th nearest other point ``(N,)``."""
    if len(features) <= nearest_k:
        raise ValueError(f"k-NN radii with k={nearest_k} need more than {nearest_k} points, got {len(features)}")
    radii = [
        torch.cdist(chunk, features).kthvalue(nearest_k + 1, dim=1).values
        for chunk in features.split(_CHUNK)
    ]
    return torch.cat(radii)


def manifold_statistics(real: Tensor, fake: Tensor, nearest_k: int = 5) -> ManifoldStats:
    """Precision and recall (torch-fidelity), density and coverage of ``fake`` against ``real``.

    Args:
        real: Real features ``(M, d)``.
        fake: Generated features ``(N, d)``.
        nearest_k: The k of the balls (Naeem et al. recommend 5 with 10,000 samples).

    Returns:
        The :class:`ManifoldStats`.
    """
    real, fake = real.float(), fake.float().to(real.device)
    if nearest_k < 1:
        raise ValueError(f"nearest_k must be >= 1, got {nearest_k}")
    precision, recall = _compat.precision_recall(fake, real, nearest_k)
    radii = knn_radii(real, nearest_k)  # (M,)
    inside = torch.zeros(len(fake), dtype=torch.float64, device=real.device)  # real balls per sample
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for start in range(0, len(real), _CHUNK):
        distances = torch.cdist(real[start : start + _CHUNK], fake)  # (m, N)
        within = distances <= radii[start : start + _CHUNK, None]
        inside += within.sum(dim=0, dtype=torch.float64)
        covered[start : start + _CHUNK] = within.any(dim=1)
    density = float(inside.mean()) / nearest_k
    return ManifoldStats(precision, recall, density, float(covered.float().mean()))
