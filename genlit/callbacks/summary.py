"""A short report at the end of a run: the last validation metrics and where files went."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from genlit.callbacks.images import run_dir
from genlit.callbacks.schedule import generator_step, latest_evaluations


class RunSummary(Callback):
    """Prints the final ``val/*`` metrics with the generator step they come from, the run
    directory and the picture folder."""

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = generator_step(trainer, pl_module)
        lines = [f"genlit: {type(pl_module).__name__} finished at global step {trainer.global_step}"]
        if hasattr(pl_module, "generator_updates"):
            lines[0] += f" ({pl_module.generator_updates} generator steps)"
        # Metrics logged during validation, then the evaluation callbacks' own latest values.
        measured = {k: (float(v), None) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        for evaluation in latest_evaluations(trainer):
            measured.update({k: (v, evaluation.step) for k, v in evaluation.metrics.items()})
        # The headline first, then the rest in name order.
        for key, (value, at) in sorted(measured.items(), key=lambda item: (item[0] != "val/fid", item[0])):
            when = "" if at is None or at == step else f"   (at generator step {at})"
            lines.append(f"  {key:<20} {value:.4g}{when}")
        folder = run_dir(trainer)
        lines.append(f"  run directory        {folder}")
        if (folder / "samples").is_dir():
            lines.append(f"  pictures             {folder / 'samples'}")
        print("\n".join(lines), flush=True)
