"""Mode coverage of samples from a Gaussian mixture, as in Unrolled GAN, VEEGAN and PacGAN.

A sample is *high quality* when it lies within ``3 * std`` of its nearest mode centre. A mode
is *covered* when at least ``min_fraction`` of the samples are high-quality samples of that
mode (PacGAN's rule: 20 of 2,500 samples, i.e. 0.8%). The KL term compares the histogram of
high-quality samples over the modes with the uniform one (0 when every mode gets its share).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ModeStats(NamedTuple):
    """Mode coverage of one set of samples."""

    modes: int
    """Number of modes covered."""
    high_quality: float
    """Fraction of samples within 3 standard deviations of a mode."""
    kl: float
    """KL(histogram of high-quality samples over modes || uniform); ``inf`` with no such sample."""


def mode_statistics(
    samples: Tensor, centers: Tensor, std: float, min_fraction: float = 20 / 2500
) -> ModeStats:
    """Counts covered modes, the fraction of high-quality samples and the mode-histogram KL.

    Args:
        samples: Generated points, shape ``(N, D)``.
        centers: Mode centres, shape ``(K, D)``.
        std: Standard deviation of every mode.
        min_fraction: Fraction of all samples a mode needs to count as covered.

    Returns:
        The :class:`ModeStats` of ``samples``.
    """
    samples = samples.detach().float().cpu()
    centers = centers.float().cpu()
    distances = torch.cdist(samples, centers)  # (N, K)
    nearest_distance, nearest = distances.min(dim=1)  # (N,), (N,)
    good = nearest_distance <= 3 * std
    counts = torch.bincount(nearest[good], minlength=len(centers)).float()  # (K,)
    covered = int((counts >= min_fraction * len(samples)).sum())
    high_quality = float(good.float().mean())
    if counts.sum() == 0:
        return ModeStats(covered, high_quality, float("inf"))
    p = counts / counts.sum()
    nonzero = p > 0
    kl = float((p[nonzero] * (p[nonzero] * len(centers)).log()).sum())
    return ModeStats(covered, high_quality, kl)
