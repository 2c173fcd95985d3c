"""``curves.png`` at the end of fit: losses, FID/KID, mode and class metrics against generator steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lightning.fabric.loggers import CSVLogger
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from genlit import _compat
from genlit.callbacks.images import run_dir
from genlit.callbacks.schedule import GeneratorStepAxis, generator_step

Series = dict[str, tuple[list[float], list[float]]]
"""Metric key -> (generator steps, values)."""

# One subplot per group: (title, keys on the left axis, keys on a right axis of their own scale).
GROUPS = (
    ("losses", "train/*loss*", ()),
    ("FID / KID", ("val/fid",), ("val/kid_mean",)),
    ("modes", ("val/modes",), ("val/high_quality",)),
    ("classes", ("val/classes",), ("val/confident",)),
    ("precision / recall", ("val/precision", "val/recall"), ()),
)


def read_metrics(path: str | Path, step_scale: float = 1.0) -> Series:
    """The numeric columns of a CSVLogger's ``metrics.csv``, against ``step * step_scale``.

    Empty cells (a row holds only the keys logged at its step) are skipped.
    """
    series: Series = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            step = row.get("step")
            if not step:
                continue
            x = float(step) * step_scale
            for key, value in row.items():
                if key in ("step", "epoch") or not value:
                    continue
                try:
                    y = float(value)
                except ValueError:
                    continue
                if math.isfinite(y):
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(x)
                    ys.append(y)
    return series


def _keys(pattern: str | tuple[str, ...], series: Series) -> list[str]:
    if isinstance(pattern, tuple):
        return [key for key in pattern if key in series]
    return sorted(key for key in series if key.startswith("train/") and "loss" in key)


def plot_curves(series: Series, path: Path) -> list[str]:
    """Draws one subplot per metric group that has values; returns the groups drawn.

    Nothing is written when no group has values.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [
        (title, _keys(left, series), _keys(right, series)) for title, left, right in GROUPS
    ]
    groups = [group for group in groups if group[1] or group[2]]
    if not groups:
        return []
    fig = Figure(figsize=(7, 2.6 * len(groups)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    colors = iter(f"C{i}" for i in range(100))
    for ax, (title, left, right) in zip(axes, groups, strict=True):
        ax.set_title(title, fontsize=10, loc="left")
        for key in left:
            few = len(series[key][0]) < 30  # a handful of points: show each one
            ax.plot(*series[key], label=key, lw=1, color=next(colors), marker="." if few else None)
        handles, labels = ax.get_legend_handles_labels()
        if right:
            ax.set_ylabel(", ".join(left), fontsize=8)
            twin = ax.twinx()
            for key in right:
                twin.plot(*series[key], label=key, lw=1, ls="--", color=next(colors), marker=".")
            twin.set_ylabel(", ".join(right), fontsize=8)
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("generator step")
    fig.savefig(path)
    return [title for title, _, _ in groups]


class Curves(Callback):
    """Writes ``curves.png`` in the run directory at the end of fit, from the run's CSV log.

    One subplot per group that was logged: the ``train/*loss*`` keys, ``val/fid`` with
    ``val/kid_mean`` (right axis), ``val/modes`` with ``val/high_quality`` (right axis); the
    x-axis is the generator step. The values are read from ``metrics.csv`` of the first
    ``CSVLogger`` among the trainer's loggers; without one the callback says so in one line
    and draws nothing. Drawing never ends a run: a failure becomes one warning. Rank zero only.

    The CSV's ``step`` column is the generator step under ``GeneratorStepAxis`` (``genlit
    fit`` adds it); otherwise it is Lightning's count of batches, converted with the run's
    ratio of optimizer steps to batches.

    Args:
        filename: Name of the picture in the run directory.
    """

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename
        self.last_path: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is None:
            rank_zero_info(f"Curves: no CSVLogger among the loggers, so no {self.filename}")
            return
        try:
            self.draw(trainer, pl_module, logger)
        except Exception as err:  # noqa: BLE001 - a picture never ends a run
            rank_zero_warn(f"Curves: could not draw {self.filename} ({type(err).__name__}: {err})")

    @staticmethod
    def step_scale(trainer: Trainer, pl_module: LightningModule) -> float:
        """Generator steps per unit of the CSV's ``step`` column."""
        if any(isinstance(callback, GeneratorStepAxis) for callback in trainer.callbacks):
            return 1.0
        batches = _compat.logged_step(trainer)
        return generator_step(trainer, pl_module) / batches if batches else 1.0

    def draw(self, trainer: Trainer, pl_module: LightningModule, logger: CSVLogger) -> Path | None:
        """Reads the logger's CSV file and writes the picture; returns its path, if drawn."""
        logger.save()  # the rows since the last flush: Lightning writes them after on_fit_end
        metrics_file = Path(logger.experiment.metrics_file_path)
        if not metrics_file.is_file():
            rank_zero_info(f"Curves: {metrics_file} holds no metrics, so no {self.filename}")
            return None
        path = run_dir(trainer) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        series = read_metrics(metrics_file, self.step_scale(trainer, pl_module))
        if not plot_curves(series, path):
            rank_zero_info(f"Curves: no losses, FID/KID or mode metrics in {metrics_file}")
            return None
        self.last_path = path
        return path
