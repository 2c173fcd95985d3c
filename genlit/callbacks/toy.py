"""Callbacks for 2-D toy data: mode coverage metrics and scatter plots of samples."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from genlit.callbacks._rng import seeded
from genlit.callbacks.images import run_dir, send_image
from genlit.metrics.modes import mode_statistics


def _due(trainer: Trainer, every_n_epochs: int) -> bool:
    if trainer.sanity_checking:
        return False
    # The last validation of fit: its epoch budget or its step budget is spent (Lightning sets
    # max_epochs = -1 and max_steps = -1 for "no limit").
    max_epochs, max_steps = trainer.max_epochs or -1, trainer.max_steps
    last = (0 < max_epochs <= trainer.current_epoch + 1) or (0 < max_steps <= trainer.global_step)
    return (trainer.current_epoch + 1) % every_n_epochs == 0 or last or trainer.should_stop


class ModeCoverage(Callback):
    """Logs ``val/modes``, ``val/high_quality`` and ``val/kl_modes`` of the model's samples.

    Needs a datamodule with discrete modes (``centers`` and ``std``, like ``GaussianRing`` and
    ``GaussianGrid``); on other data it does nothing.

    Args:
        num_samples: Samples drawn per evaluation (2,500 in the Unrolled GAN / PacGAN setups),
            over all DDP ranks.
        every_n_epochs: Evaluate at the end of every n-th validation epoch.
        seed: Seed of the evaluation noise (rank r uses ``seed + r``); training's RNG is untouched.
    """

    def __init__(self, num_samples: int = 2500, every_n_epochs: int = 1, seed: int = 0) -> None:
        if num_samples < 1 or every_n_epochs < 1:
            raise ValueError("ModeCoverage needs num_samples >= 1 and every_n_epochs >= 1")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.seed = seed

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "centers", None) is None or trainer.sanity_checking:
            return
        if not (trainer.state.fn != "fit" or _due(trainer, self.every_n_epochs)):
            return
        # Each DDP rank draws its share from its own seed; all ranks then score the gathered set.
        rank, world = trainer.global_rank, trainer.world_size
        per_rank = -(-self.num_samples // world)
        with seeded(pl_module.device, self.seed + rank):
            samples = pl_module.sample(per_rank)  # (per_rank, D)
        if world > 1:
            samples = pl_module.all_gather(samples).reshape(-1, samples.shape[-1])
        samples = samples[: self.num_samples]
        stats = mode_statistics(samples, datamodule.centers, datamodule.std)
        pl_module.log_dict(
            {"val/modes": float(stats.modes), "val/high_quality": stats.high_quality,
             "val/kl_modes": stats.kl},
            prog_bar=True,
        )


class ScatterPlot(Callback):
    """Saves a scatter plot of model samples over real data as ``samples/epoch_XXXX.png``.

    The file lies under the run directory and goes to the logger too when it takes images.

    Args:
        num_samples: Generated points per plot.
        every_n_epochs: Plot at the end of every n-th validation epoch (and the last one).
        seed: Seed of the plotted noise (the same points every epoch); training's RNG is untouched.
    """

    def __init__(self, num_samples: int = 1000, every_n_epochs: int = 1, seed: int = 0) -> None:
        if num_samples < 1 or every_n_epochs < 1:
            raise ValueError("ScatterPlot needs num_samples >= 1 and every_n_epochs >= 1")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.state.fn == "fit" and not _due(trainer, self.every_n_epochs):
            return
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
        ax.set_title(f"{type(pl_module).__name__}, step {trainer.global_step}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="upper right", markerscale=4, fontsize="small")
        path = run_dir(trainer) / "samples" / f"epoch_{trainer.current_epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        self.last_path = path
        send_image(trainer, "samples/scatter", path)
