"""When a sample-based evaluation runs during ``fit``: every n epochs, every n generator steps,
and always once on the final weights.

Generator steps are genlit's user-facing unit (``trainer.global_step`` counts optimizer
steps: ``k + 1`` per generator step for a GAN). A model without
``optimizer_steps_per_generator_step`` counts one per optimizer step.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from genlit import _compat
from genlit.models.buffers import agree_buffers


def generator_step(trainer: Trainer, pl_module: LightningModule) -> int:
    """The number of generator updates so far (optimizer steps for one-network models)."""
    done = getattr(pl_module, "generator_steps_done", None)
    if isinstance(done, int):
        return done
    return trainer.global_step // int(getattr(pl_module, "optimizer_steps_per_generator_step", 1))


def step_budget_spent(trainer: Trainer) -> bool:
    """Whether this is the last training step of a step budget (``max_steps``) or a stop request."""
    max_steps = trainer.max_steps
    return (max_steps is not None and 0 < max_steps <= trainer.global_step) or trainer.should_stop


def epoch_budget_spent(trainer: Trainer) -> bool:
    """Whether the epoch that is ending is the last of an epoch budget (``max_epochs``)."""
    max_epochs = trainer.max_epochs or -1
    return 0 < max_epochs <= trainer.current_epoch + 1


def finish_training(pl_module: LightningModule) -> None:
    """Completes a genlit model's training (:meth:`GenerativeModel.complete_training`) before
    its final evaluation or checkpoint; other modules have nothing to complete."""
    complete = getattr(pl_module, "complete_training", None)
    if callable(complete):
        complete()


def agree_across_ranks(pl_module: LightningModule) -> None:
    """Gives every DDP rank rank 0's model (:meth:`GenerativeModel.agree_across_ranks`) before
    an evaluation; a collective. Other modules' buffers are copied from rank 0 the same way."""
    agree = getattr(pl_module, "agree_across_ranks", None)
    if callable(agree):
        agree()
    else:
        agree_buffers(pl_module)


class EvaluationSchedule:
    """Decides, hook by hook, whether an evaluation callback measures now; never twice a step.

    Args:
        every_n_epochs: Evaluate at the end of every n-th epoch (``None``: only by steps).
        every_n_steps: Evaluate after every n-th generator step (``None``: only by epochs).
    """

    def __init__(self, every_n_epochs: int | None = 1, every_n_steps: int | None = None) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.done_at: int | None = None
        """The global step of the last evaluation during fit."""
        self._seen: int | None = None  # the generator step at the previous batch's end

    def _fresh(self, trainer: Trainer) -> bool:
        return self.done_at != trainer.global_step and not trainer.sanity_checking

    def after_batch(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """At the end of a training batch: an ``every_n_steps`` evaluation, or the final one."""
        if trainer.fast_dev_run or not self._fresh(trainer) or getattr(trainer, "received_sigterm", False):
            return False
        step = generator_step(trainer, pl_module)
        if self._seen is not None:
            advanced = step != self._seen  # this batch made a generator step
        else:  # the first batch of this fit
            advanced = step > 0 and trainer.global_step % int(
                getattr(pl_module, "optimizer_steps_per_generator_step", 1)) == 0
        self._seen = step
        due = self.every_n_steps is not None and advanced and step % self.every_n_steps == 0
        return due or step_budget_spent(trainer)

    def after_epoch(self, trainer: Trainer) -> bool:
        """At the end of an epoch (its validation, or training without one)."""
        if trainer.fast_dev_run or not self._fresh(trainer):
            return False
        due = self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return due or epoch_budget_spent(trainer) or step_budget_spent(trainer)

    def mark(self, trainer: Trainer) -> None:
        """Records that an evaluation ran at this step."""
        self.done_at = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"done_at": self.done_at}


class ScheduledEvaluation(Callback):
    """A callback that measures or draws on an :class:`EvaluationSchedule` during ``fit``, and at
    every ``validate``.

    Subclasses set ``self.schedule`` and implement :meth:`run`.
    """

    schedule: EvaluationSchedule

    def run(self, trainer: Trainer, pl_module: LightningModule, in_training: bool) -> Any:
        """Measures (or draws) now; ``in_training`` when called from a training hook."""
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn != "fit":
            self.run(trainer, pl_module, in_training=False)
        elif self.schedule.after_epoch(trainer):
            if epoch_budget_spent(trainer) or step_budget_spent(trainer):
                finish_training(pl_module)
                agree_across_ranks(pl_module)
            self.run(trainer, pl_module, in_training=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.schedule.after_batch(trainer, pl_module):
            if step_budget_spent(trainer) and not getattr(trainer, "received_sigterm", False):
                finish_training(pl_module)
            agree_across_ranks(pl_module)  # the step left each DDP rank its own batch-norm statistics
            self.run(trainer, pl_module, in_training=True)


class StagedEvaluation(ScheduledEvaluation):
    """A scheduled evaluation that also measures at the end of training epochs when fit never
    validates, and at ``test`` (as ``test/...``). Subclasses implement :meth:`evaluate`."""

    _validation_off: bool | None = None

    def evaluate(
        self, trainer: Trainer, pl_module: LightningModule, stage: str = "val", in_training: bool = False
    ) -> Any:
        raise NotImplementedError

    def run(self, trainer: Trainer, pl_module: LightningModule, in_training: bool) -> Any:
        return self.evaluate(trainer, pl_module, "val", in_training)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.evaluate(trainer, pl_module, "test")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._no_validation(trainer) and self.schedule.after_epoch(trainer):
            self.evaluate(trainer, pl_module, "val")

    def _no_validation(self, trainer: Trainer) -> bool:
        """True when fit never validates (no validation split, or limit_val_batches=0)."""
        if self._validation_off is None:
            off = not trainer.limit_val_batches
            datamodule = getattr(trainer, "datamodule", None)
            if not off and datamodule is not None:
                loaders = datamodule.val_dataloader()
                off = isinstance(loaders, (list, tuple)) and len(loaders) == 0
            self._validation_off = off
        return self._validation_off


class Evaluation:
    """The values of one evaluation and the generator step they were measured at."""

    def __init__(self, metrics: dict[str, float], step: int) -> None:
        self.metrics = metrics
        self.step = step


def latest_evaluations(trainer: Trainer) -> list[Evaluation]:
    """The last evaluation of every evaluation callback of ``trainer`` (for the run summary)."""
    found = [getattr(callback, "last_evaluation", None) for callback in trainer.callbacks]
    return [evaluation for evaluation in found if isinstance(evaluation, Evaluation)]


def log_evaluation(
    trainer: Trainer,
    pl_module: LightningModule,
    metrics: dict[str, float],
    in_training: bool,
    prog_bar: tuple[str, ...] = (),
) -> Evaluation:
    """Logs an evaluation's values, against the generator step, wherever it was measured.

    From a validation hook Lightning writes them to the loggers itself; from a training hook
    it would only on its logging steps, so they are written to each logger directly.

    Returns:
        The values and their generator step; callbacks keep it as ``last_evaluation``.
    """
    evaluation = Evaluation(dict(metrics), generator_step(trainer, pl_module))
    for key, value in metrics.items():
        pl_module.log(key, value, sync_dist=True, prog_bar=key in prog_bar, logger=not in_training)
    if not in_training:
        return evaluation
    row = {**metrics, "epoch": float(trainer.current_epoch)}
    for logger in trainer.loggers:
        try:
            logger.log_metrics(row, step=evaluation.step)
        except Exception as err:  # noqa: BLE001 - a tracker never ends a run
            rank_zero_warn(f"could not log {sorted(metrics)} to {type(logger).__name__}: {err}")
    return evaluation


class GeneratorStepAxis(Callback):
    """Makes the generator step the x-axis of every row the loggers write (and ``{step}`` in
    checkpoint names).

    Lightning plots training rows against batches and names checkpoints by optimizer steps;
    a logged ``step`` value replaces both (Lightning's documented override). It is logged on
    Lightning's logging steps, at every validation and at every training epoch's end.
    ``genlit fit`` adds this callback by itself.
    """

    def _log(self, trainer: Trainer, pl_module: LightningModule, logger: bool) -> None:
        pl_module.log_dict(
            {"step": float(generator_step(trainer, pl_module)), "epoch": float(trainer.current_epoch)},
            logger=logger,
        )

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if _compat.logs_this_step(trainer):
            self._log(trainer, pl_module, logger=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, logger=False)  # checkpoint names read it

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._log(trainer, pl_module, logger=True)
