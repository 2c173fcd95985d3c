"""Class coverage of model samples on digits, MNIST, Fashion-MNIST and Stacked MNIST."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from genlit.callbacks import progress
from genlit.callbacks._rng import seeded
from genlit.callbacks.schedule import (
    Evaluation,
    EvaluationSchedule,
    StagedEvaluation,
    generator_step,
    log_evaluation,
)
from genlit.errors import GenlitError
from genlit.metrics.classes import ClassCounter, ClassStats, class_histogram
from genlit.metrics.fid import real_labels, share, to_uint8

__all__ = ["ClassCoverage"]


class ClassCoverage(StagedEvaluation):
    """Logs ``val/classes``, ``val/kl_classes`` and ``val/confident`` of ``model.sample``.

    A genlit classifier labels the samples (:mod:`genlit.metrics.classes`): ``classes`` is the
    number of classes covered (mode collapse lowers it), ``kl_classes`` the KL from the
    samples' class histogram to the data's (0 when each class has its share), ``confident``
    the share of samples labelled with probability >= ``threshold`` (mode mixture and blur
    lower it). FID folds all three into one number; a run that drops three digits and one that
    blurs all ten can have the same FID, not the same coverage.

    With ``stacked: true`` (Stacked MNIST, 1,000 classes) each channel is labelled by the MNIST
    classifier, a mode counts with one sample and the KL is to the uniform histogram, as in
    the Unrolled GAN, VEEGAN and PacGAN tables.

    Runs on the same schedule as :class:`FID` (every ``every_n_epochs``-th validation, every
    ``every_n_steps``-th generator step, once on the final weights, at every ``validate``
    and, as ``test/...``, at ``test``), from its own seeded noise: training's random state
    and results are unchanged.

    Args:
        classifier: ``digits``, ``mnist`` or ``fashion_mnist``: the network trained on the
            data the model learns.
        stacked: Stacked MNIST (needs ``classifier: mnist`` and 3-channel samples).
        num_samples: Generated images per evaluation, over all ranks (PacGAN: 26,000 for
            Stacked MNIST); ``None``: as many as the ``split`` has images.
        every_n_epochs: Evaluate at every n-th epoch (``None``: by steps and at the end only).
        every_n_steps: Also evaluate after every n-th generator step.
        reference: ``data``: the KL is to the class histogram of the datamodule's ``split``
            labels; ``uniform``: to the uniform one (the default for ``stacked``).
        split: The split whose labels give the data's histogram.
        min_fraction: Share of the samples a class needs to count as covered; ``None``: 0.01,
            or a single sample for ``stacked``.
        threshold: Probability from which a sample counts as confidently classified.
        batch_size: Images per ``sample`` call.
        weights_path: Another weights file for the classifier.
        seed: Seed of the samples (rank r uses ``seed + r``).
    """

    def __init__(
        self,
        classifier: Literal["digits", "mnist", "fashion_mnist"] = "mnist",
        stacked: bool = False,
        num_samples: int | None = 10000,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        reference: Literal["data", "uniform"] | None = None,
        split: Literal["train", "val", "test"] = "test",
        min_fraction: float | None = None,
        threshold: float = 0.9,
        batch_size: int = 500,
        weights_path: str | None = None,
        seed: int = 0,
    ) -> None:
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"ClassCoverage needs num_samples >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"ClassCoverage needs batch_size >= 1, got {batch_size}")
        reference = reference or ("uniform" if stacked else "data")
        if reference not in ("data", "uniform"):
            raise ValueError(f"reference must be data or uniform, got {reference!r}")
        self.counter = ClassCounter(classifier, stacked, None, min_fraction, threshold, weights_path)
        self.classifier = classifier
        self.stacked = stacked
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.schedule = EvaluationSchedule(every_n_epochs, every_n_steps)
        self.reference = reference
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.last: ClassStats | None = None
        self.last_evaluation: Evaluation | None = None
        self._reference_ready = False

    def prepare(self, trainer: Trainer) -> ClassCounter:
        """The data's class histogram (and the sample count of ``num_samples: null``), read once
        from the datamodule's labels."""
        if not self._reference_ready:
            if self.reference == "data" or self.num_samples is None:
                datamodule = getattr(trainer, "datamodule", None)
                if datamodule is None:
                    raise GenlitError(
                        "ClassCoverage needs a datamodule to read the labels from (reference=data "
                        "or num_samples=null); give one, or set reference: uniform and num_samples"
                    )
                labels = real_labels(datamodule, self.split)
                if self.num_samples is None:
                    self.num_samples = len(labels)
                if self.reference == "data":
                    self.counter.reference = class_histogram(labels, self.counter.num_classes)
            self._reference_ready = True
        return self.counter

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> ClassStats:
        """Draws the samples and returns their :class:`ClassStats`; logs nothing."""
        with torch.inference_mode(False), torch.no_grad():
            counter = self.prepare(trainer).to(pl_module.device)
            rank, world = trainer.global_rank, trainer.world_size
            n = share(self.num_samples, world, rank)
            with seeded(pl_module.device, self.seed + rank):
                done = 0
                while done < n:
                    b = min(self.batch_size, n - done)
                    images = to_uint8(pl_module.sample(b))
                    if self.stacked and images.shape[1] != 3:
                        raise GenlitError(
                            f"Stacked MNIST coverage needs 3-channel samples, got {images.shape[1]}: "
                            "set the generator's channels to 3"
                        )
                    counter.update(images)
                    done += b
            stats = counter.compute()
            counter.reset()
        self.last = stats
        return stats

    def evaluate(
        self, trainer: Trainer, pl_module: LightningModule, stage: str = "val", in_training: bool = False
    ) -> ClassStats:
        """Measures, then logs ``{stage}/classes``, ``{stage}/kl_classes``, ``{stage}/confident``."""
        if trainer.state.fn == "fit":
            self.schedule.mark(trainer)
        stats = self.measure(trainer, pl_module)
        metrics = {
            f"{stage}/classes": float(stats.classes),
            f"{stage}/kl_classes": stats.kl,
            f"{stage}/confident": stats.confident,
        }
        self.last_evaluation = log_evaluation(
            trainer, pl_module, metrics, in_training, prog_bar=(f"{stage}/classes",)
        )
        progress.write(
            trainer,
            f"{stage}/classes {stats.classes}/{stats.num_classes}, KL {stats.kl:.4g} to the "
            f"{self.reference} histogram, {stats.confident:.1%} confident (generator step "
            f"{generator_step(trainer, pl_module)}; {self.num_samples} samples; "
            f"{self.classifier} classifier{', stacked' if self.stacked else ''})",
        )
        return stats
