"""Class coverage of generated images: the image counterpart of the toy mode statistics.

A classifier trained on the real data (genlit's ``digits``, ``mnist`` and ``fashion_mnist``
networks) labels every generated image. Three numbers then separate what FID folds together:

* ``classes``: how many classes the samples cover: a class counts when it receives at least
  ``min_fraction`` of the samples (and at least one sample). Mode collapse lowers it.
* ``kl``: ``KL(p_samples || p_data)`` between the predicted-class histogram of the samples and
  the class histogram of the data; 0 when every class has its share.
* ``confident``: the share of samples the classifier labels with probability at least
  ``threshold``; mode mixture (images between classes) and blur lower it.

Stacked MNIST (Metz et al. 2017; Srivastava et al. 2017; Lin et al. 2018) stacks three digits
into the channels of one image: 1,000 classes, each channel labelled by the MNIST classifier
(:func:`stacked_predictions`). There the published protocol counts a mode with a single sample
(``min_fraction=0``) and compares with the uniform histogram.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from genlit.errors import GenlitError
from genlit.metrics.features import CLASSIFIERS, load_features

__all__ = [
    "ClassCounter",
    "ClassStats",
    "class_histogram",
    "class_statistics",
    "stacked_predictions",
]


class ClassStats(NamedTuple):
    """Class coverage of one set of samples."""

    classes: int
    """Classes covered."""
    kl: float
    """KL(predicted-class histogram of the samples || the data's)."""
    confident: float
    """Share of samples labelled with probability >= the threshold."""
    num_classes: int
    """Classes there are."""


def class_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """The class frequencies of integer labels: float64 ``(num_classes,)`` summing to 1."""
    counts = torch.bincount(labels.long().flatten().cpu(), minlength=num_classes).double()
    if len(counts) > num_classes:
        raise ValueError(f"labels reach {len(counts) - 1}, but there are {num_classes} classes")
    return counts / counts.sum().clamp_min(1)


def class_statistics(
    predicted: Tensor,
    confidence: Tensor,
    num_classes: int,
    reference: Tensor | None = None,
    min_fraction: float = 0.01,
    threshold: float = 0.9,
) -> ClassStats:
    """Classes covered, the histogram KL and the confident share of classified samples.

    Args:
        predicted: The predicted class of each sample, int ``(N,)``.
        confidence: The probability the classifier gives that class, ``(N,)``.
        num_classes: Classes there are.
        reference: The data's class histogram ``(num_classes,)``; ``None``: uniform. A class the
            data never shows but the samples do makes the KL infinite.
        min_fraction: Share of the samples a class needs to count as covered (at least one
            sample in any case); 0: a single sample.
        threshold: Probability from which a sample counts as confidently classified.

    Returns:
        The :class:`ClassStats`.
    """
    if len(predicted) == 0:
        raise ValueError("class statistics need at least one sample")
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must be in [0, 1), got {min_fraction}")
    counts = torch.bincount(predicted.long().cpu(), minlength=num_classes).double()
    needed = max(1, math.ceil(min_fraction * len(predicted) - 1e-9))
    covered = int((counts >= needed).sum())
    p = counts / counts.sum()
    q = (
        torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        if reference is None
        else reference.double().cpu() / reference.double().sum()
    )
    seen = p > 0
    kl = float((p[seen] * (p[seen] / q[seen]).log()).sum()) if bool((q[seen] > 0).all()) else math.inf
    confident = float((confidence.float().cpu() >= threshold).float().mean())
    return ClassStats(covered, kl, confident, num_classes)


def stacked_predictions(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Stacked MNIST's class of each image from its channels' digit logits.

    Args:
        logits: The MNIST classifier's logits of every channel, ``(N, 3, 10)`` (channel 0 is
            the hundreds digit).

    Returns:
        ``(classes, confidence)``: ``100 a + 10 b + c`` in [0, 1000), int64 ``(N,)``, and the
        product of the three channels' top probabilities ``(N,)``.
    """
    probabilities = logits.float().softmax(dim=-1)  # (N, C, 10)
    top, digits = probabilities.max(dim=-1)  # (N, C)
    places = 10 ** torch.arange(digits.shape[1] - 1, -1, -1, device=digits.device)  # (C,)
    return (digits * places).sum(dim=1), top.prod(dim=1)


class ClassCounter(Metric):
    """Labels generated uint8 images with a genlit classifier and scores their class coverage.

    A torchmetrics metric: under DDP every rank updates with its own samples and the labels
    are gathered at ``compute``.

    Args:
        classifier: ``digits``, ``mnist`` or ``fashion_mnist`` (genlit's shipped networks).
        stacked: Stacked MNIST: each of the images' channels is one digit, classified on its
            own (1,000 classes for 3 channels); needs the ``mnist`` classifier.
        reference: The data's class histogram; ``None``: uniform.
        min_fraction: Share of the samples a class needs to count as covered; ``None``: 0.01
            (a tenth of a fair share of 10 classes), or 0 (one sample, the published protocol)
            for Stacked MNIST.
        threshold: Probability from which a sample counts as confidently classified.
        weights_path: Another weights file for the classifier (``scripts/train_features.py``).
    """

    full_state_update = False

    def __init__(
        self,
        classifier: str = "mnist",
        stacked: bool = False,
        reference: Tensor | None = None,
        min_fraction: float | None = None,
        threshold: float = 0.9,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise GenlitError(
                f"class coverage needs one of genlit's classifiers ({', '.join(CLASSIFIERS)}), "
                f"got {classifier!r}"
            )
        if stacked and classifier != "mnist":
            raise GenlitError(f"Stacked MNIST is labelled with the mnist classifier, not {classifier!r}")
        if not 0.0 < threshold <= 1.0:
            raise GenlitError(f"threshold must be in (0, 1], got {threshold}")
        self.network = load_features(classifier, weights_path)  # leaves the global RNG alone
        self.stacked = stacked
        self.min_fraction = (0.0 if stacked else 0.01) if min_fraction is None else min_fraction
        if not 0.0 <= self.min_fraction < 1.0:
            raise GenlitError(f"min_fraction must be in [0, 1), got {self.min_fraction}")
        self.threshold = threshold
        self.reference = reference
        self.add_state("predicted", [], dist_reduce_fx="cat")
        self.add_state("confidence", [], dist_reduce_fx="cat")
        self.channels: int | None = None

    @property
    def num_classes(self) -> int:
        """Classes there are: 10, or ``10 ** channels`` for Stacked MNIST."""
        return 10 ** (self.channels or 3) if self.stacked else 10

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The predicted class and its probability of uint8 images ``(B, C, H, W)``."""
        if images.dtype != torch.uint8:
            raise TypeError(f"the classifier takes uint8 images (use to_uint8), got {images.dtype}")
        if not self.stacked:
            probabilities = self.network.logits(images).softmax(dim=-1)  # (B, 10)
            confidence, predicted = probabilities.max(dim=-1)
            return predicted, confidence
        b, c = images.shape[:2]
        logits = self.network.logits(images.reshape(b * c, 1, *images.shape[2:]))  # (B C, 10)
        return stacked_predictions(logits.reshape(b, c, -1))

    def update(self, images: Tensor) -> None:
        """Adds generated uint8 images ``(B, C, H, W)``."""
        self.channels = images.shape[1]
        predicted, confidence = self.classify(images)
        self.predicted.append(predicted)
        self.confidence.append(confidence.float())

    def compute(self) -> ClassStats:
        return class_statistics(
            dim_zero_cat(self.predicted),
            dim_zero_cat(self.confidence),
            self.num_classes,
            self.reference,
            self.min_fraction,
            self.threshold,
        )
