"""Callbacks for 2-D toy data: mode coverage metrics and scatter plots of samples."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer

from genlit.callbacks._rng import seeded
from genlit.callbacks.images import run_dir, send_image
from genlit.callbacks.schedule import (
    Evaluation,
    EvaluationSchedule,
    ScheduledEvaluation,
    generator_step,
    log_evaluation,
)
from genlit.metrics.modes import mode_statistics


class ModeCoverage(ScheduledEvaluation):
    """Logs ``val/modes``, ``val/high_quality`` and ``val/kl_modes`` of the model's samples.

    Needs a datamodule with discrete modes (``centers`` and ``std``, like ``GaussianRing`` and
    ``GaussianGrid``); on other data it does nothing.

    Args:
        num_samples: Samples drawn per evaluation (2,500 in the Unrolled GAN / PacGAN setups),
            over all DDP ranks.
        every_n_epochs: Evaluate at the end of every n-th validation epoch (``None``: by steps
            and at the end only).
        every_n_steps: Also evaluate after every n-th generator step.
        seed: Seed of the evaluation noise (rank r uses ``seed + r``); training's RNG is untouched.

    During ``fit`` it also evaluates once on the final weights.
    """

    def __init__(
        self, num_samples: int = 2500, every_n_epochs: int | None = 1,
        every_n_steps: int | None = None, seed: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"ModeCoverage needs num_samples >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.schedule = EvaluationSchedule(every_n_epochs, every_n_steps)
        self.seed = seed
        self.last_evaluation: Evaluation | None = None

    def run(self, trainer: Trainer, pl_module: LightningModule, in_training: bool = False) -> None:
        """Draws the samples and logs the mode statistics (nothing on data without modes)."""
        datamodule = trainer.datamodule
        if getattr(datamodule, "centers", None) is None:
            return
        if trainer.state.fn == "fit":
            self.schedule.mark(trainer)
        # Each DDP rank draws its share from its own seed; all ranks then score the gathered set.
        rank, world = trainer.global_rank, trainer.world_size
        per_rank = -(-self.num_samples // world)
        with seeded(pl_module.device, self.seed + rank):
            samples = pl_module.sample(per_rank)  # (per_rank, D)
        if world > 1:
            samples = pl_module.all_gather(samples).reshape(-1, samples.shape[-1])
        samples = samples[: self.num_samples]
        stats = mode_statistics(samples, datamodule.centers, datamodule.std)
        metrics = {"val/modes": float(stats.modes), "val/high_quality": stats.high_quality,
                   "val/kl_modes": stats.kl}
        self.last_evaluation = log_evaluation(
            trainer, pl_module, metrics, in_training, prog_bar=tuple(metrics)
        )


class ScatterPlot(ScheduledEvaluation):
    """Saves a scatter plot of model samples over real data as ``samples/step_XXXXXX.png``.

    Named by generator step. The file lies under the run directory and goes to the logger too
    when it takes images.

    Args:
        num_samples: Generated points per plot.
        every_n_epochs: Plot at the end of every n-th validation epoch (``None``: by steps and at
            the end only).
        every_n_steps: Also plot after every n-th generator step.
        seed: Seed of the plotted noise (the same points every epoch); training's RNG is untouched.

    During ``fit`` it also plots the final weights.
    """

    def __init__(
        self, num_samples: int = 1000, every_n_epochs: int | None = 1,
        every_n_steps: int | None = None, seed: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"ScatterPlot needs num_samples >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.schedule = EvaluationSchedule(every_n_epochs, every_n_steps)
        self.seed = seed
        self.last_path: Path | None = None

    def run(self, trainer: Trainer, pl_module: LightningModule, in_training: bool = False) -> Path | None:
        """Saves and sends the plot now (rank zero); returns its path."""
        if trainer.state.fn == "fit":
            self.schedule.mark(trainer)
        if not trainer.is_global_zero:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with seeded(pl_module.device, self.seed):
            fake = pl_module.sample(self.num_samples).float().cpu()
        real = getattr(trainer.datamodule, "val_data", None)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        if isinstance(real, torch.Tensor):
            ax.scatter(real[:, 0], real[:, 1], s=2, c="tab:blue", alpha=0.3, label="data")
        ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:orange", alpha=0.5, label="samples")
        step = generator_step(trainer, pl_module)
        ax.set_title(f"{type(pl_module).__name__}, generator step {step}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="upper right", markerscale=4, fontsize="small")
        path = run_dir(trainer) / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        self.last_path = path
        send_image(trainer, "samples/scatter", path)
        return path
