"""A short report at the end of a run: the last validation metrics and where files went."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from genlit.callbacks.images import run_dir


class RunSummary(Callback):
    """Prints the final ``val/*`` metrics, the run directory and the picture folder."""

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        lines = [f"genlit: {type(pl_module).__name__} finished at global step {trainer.global_step}"]
        if hasattr(pl_module, "generator_updates"):
            lines[0] += f" ({pl_module.generator_updates} generator steps)"
        for key, value in sorted(metrics.items()):
            lines.append(f"  {key:<20} {value:.4g}")
        folder = run_dir(trainer)
        lines.append(f"  run directory        {folder}")
        if (folder / "samples").is_dir():
            lines.append(f"  pictures             {folder / 'samples'}")
        print("\n".join(lines), flush=True)
