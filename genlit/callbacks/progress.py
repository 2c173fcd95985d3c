"""Progress in generator steps: one bar in a terminal, a plain line now and then in a file.

Lightning's bar restarts every epoch, counts batches, and writes a carriage-return update per
batch: 300 kB of them for the quickstart's 40 seconds when stdout goes to a file, and lines
printed meanwhile land inside the bar. :class:`GeneratorProgressBar` counts genlit's unit, the
generator step, against the whole run's budget; :func:`write` prints a line above it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from genlit.callbacks.schedule import generator_step

PLAIN_LINES = 25
"""About how many plain lines a run with a known budget prints (between 25 and 50)."""


def generator_step_budget(trainer: Trainer, pl_module: LightningModule) -> int | None:
    """The generator steps ``fit`` will run, or ``None`` when it has no end.

    ``trainer.max_steps`` counts optimizer steps (``optimizer_steps_per_generator_step`` per
    generator step; one for models without it); an epoch is one discriminator step a batch,
    so ``discriminator_steps`` batches a generator step. Whichever ends first is the budget.
    """
    budgets = []
    if trainer.max_steps is not None and trainer.max_steps > 0:
        per_step = int(getattr(pl_module, "optimizer_steps_per_generator_step", 1))
        # The steps done, counted by the model (a run resumed with another k made them at
        # another rate), plus the optimizer steps left at today's rate. fast_dev_run's one
        # batch is max_steps=1, though a GAN's batch makes two steps.
        left = max(0, trainer.max_steps - trainer.global_step) // per_step
        budgets.append(max(1, generator_step(trainer, pl_module) + left))
    batches = trainer.num_training_batches
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and not math.isinf(batches):
        per_step = int(getattr(pl_module, "discriminator_steps", 1))
        budgets.append(trainer.max_epochs * int(batches) // per_step)
    return min(budgets) if budgets else None


def with_progress_bar(callbacks: Any, enable_progress_bar: bool | None) -> Any:
    """A trainer's ``callbacks`` with a :class:`GeneratorProgressBar` added, so that Lightning
    adds none of its own.

    Lightning adds its default bar (TQDM, or Rich where installed) inside ``Trainer`` when
    ``enable_progress_bar`` is not false and none of the callbacks is a progress bar; where it
    would, this bar comes instead. A progress bar the config names stays, and
    ``enable_progress_bar: false`` keeps the run without one.

    Args:
        callbacks: The config's ``trainer.callbacks``: a list, one callback or ``None``.
        enable_progress_bar: The config's ``trainer.enable_progress_bar`` (``None``: true).

    Returns:
        ``callbacks`` itself when nothing is added, else a new list.
    """
    named = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    named = [callback for callback in named if callback is not None]
    if enable_progress_bar is False or any(isinstance(c, ProgressBar) for c in named):
        return callbacks
    return [*named, GeneratorProgressBar()]


def write(trainer: Trainer, text: str) -> None:
    """Prints ``text`` as a line of its own, once per run (rank zero).

    Above the progress bar in a terminal, in order with the plain progress lines in a file;
    without a progress bar, through Lightning's log (``rank_zero_info``), as before.
    """
    bar = trainer.progress_bar_callback
    if bar is None or not bar.is_enabled:
        rank_zero_info(text)
    elif trainer.is_global_zero:
        bar.print(text)


class GeneratorProgressBar(TQDMProgressBar):
    """The progress of ``fit`` in generator steps: a bar in a terminal, lines in a file.

    In a terminal: one bar for the whole run, its total the budget in generator steps, with
    the logged losses beside it; evaluation lines (:func:`write`) go above it. Validation
    inside ``fit`` has no bar of its own; ``validate`` and ``test`` keep Lightning's.

    When stdout is not a terminal (a file, a pipe): no bar, but a line every ``refresh``
    generator steps and one at the end, such as
    ``genlit: step 200/800 (25%)  d_loss 1.23  g_loss 0.98  12.3 steps/s``.
    ``genlit fit`` uses this bar unless the config names a progress bar of its own.

    Args:
        refresh: Generator steps between plain lines; ``None``: a 25th of the budget (25 to
            50 lines a run), or 100 when the run has no budget.
        refresh_rate: Generator steps between redraws of the bar.
        plain: Plain lines (``True``) or the bar (``False``); ``None``: plain lines when
            stdout is not a terminal.
    """

    def __init__(
        self, refresh: int | None = None, refresh_rate: int = 1, plain: bool | None = None
    ) -> None:
        if refresh is not None and refresh < 1:
            raise ValueError(f"refresh must be >= 1 generator step, got {refresh}")
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self.refresh = refresh
        self.plain = plain
        self.budget: int | None = None
        """The run's budget in generator steps, known from the start of training."""
        self._plain = bool(plain)
        self._drawing = False  # a bar is on the screen: lines go above it
        self._every = refresh or 100
        self._shown_step: int | None = None
        self._line_step: int | None = None
        self._rate_from: tuple[int, float] = (0, 0.0)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._plain = not sys.stdout.isatty() if self.plain is None else self.plain

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self._drawing:
            super().print(*args, sep=sep, **kwargs)
        else:
            print(*args, sep=sep, flush=True)

    # --- fit: one bar, or lines ---------------------------------------------------------

    def on_sanity_check_start(self, *_: Any) -> None:
        pass  # one bar: none for the sanity check either

    def on_sanity_check_end(self, *_: Any) -> None:
        pass

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.budget = generator_step_budget(trainer, pl_module)
        start = generator_step(trainer, pl_module)  # not 0 when resuming
        self._shown_step, self._line_step = start, None
        self._rate_from = (start, time.perf_counter())
        if self.refresh is None:
            self._every = max(1, self.budget // PLAIN_LINES) if self.budget else 100
        if self._plain:
            return
        bar = self.init_train_tqdm()
        bar.reset(total=self.budget)
        bar.initial = bar.n = start
        bar.refresh()
        self.train_progress_bar = bar
        self._drawing = not bar.disable

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        if not self._plain:
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *_: Any) -> None:
        step = generator_step(trainer, pl_module)
        if step == self._shown_step:
            return  # a discriminator-only batch
        self._shown_step = step
        if self._plain:
            if step % self._every == 0 or step == self.budget:
                self._print_line(trainer, pl_module, step)
        elif step % self.refresh_rate == 0 or step == self.budget:
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self._metrics(trainer, pl_module))  # redraws

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._plain:
            self.train_progress_bar.set_postfix(self._metrics(trainer, pl_module))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, *_: Any) -> None:
        if trainer.state.fn == "fit" and self._rate_from[1]:  # training had started
            self._finish(trainer, pl_module)

    def _finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = generator_step(trainer, pl_module)
        if self._plain:
            if step != self._line_step:
                self._print_line(trainer, pl_module, step)  # the last line is the end state
        elif self._drawing:
            self._drawing = False
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self._metrics(trainer, pl_module))
            self.train_progress_bar.close()

    def _metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        shown = {}
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key != "v_num":
                shown[key.removeprefix("train/")] = f"{value:.4g}" if isinstance(value, float) else value
        return shown

    def _print_line(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        if self.is_disabled:  # the other DDP ranks
            return
        line = f"genlit: step {step}"
        if self.budget:
            line += f"/{self.budget} ({100 * step // self.budget}%)"
        for key, value in self._metrics(trainer, pl_module).items():
            line += f"  {key} {value}"
        first, since = self._rate_from
        now = time.perf_counter()
        if step > first and now > since:
            line += f"  {(step - first) / (now - since):.3g} steps/s"
        self._line_step = step
        self._rate_from = (step, now)
        self.print(line)

    # --- validate, test, predict: Lightning's bars in a terminal, none in a file ---------

    def _lightnings_bar(self, trainer: Trainer) -> bool:
        """Whether a validation hook draws Lightning's bar: in a terminal, outside ``fit``."""
        return not self._plain and trainer.state.fn != "fit"

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._lightnings_bar(trainer):
            super().on_validation_start(trainer, pl_module)
            self._drawing = self.is_enabled

    def on_validation_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if self._lightnings_bar(trainer):
            super().on_validation_batch_start(trainer, *args, **kwargs)

    def on_validation_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if self._lightnings_bar(trainer):
            super().on_validation_batch_end(trainer, *args, **kwargs)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._lightnings_bar(trainer):
            super().on_validation_end(trainer, pl_module)
            self._drawing = False
        elif self._drawing:  # the one bar of fit shows val/fid
            self.train_progress_bar.set_postfix(self._metrics(trainer, pl_module))

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._plain:
            super().on_test_start(trainer, pl_module)
            self._drawing = self.is_enabled

    def on_test_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._plain:
            super().on_test_batch_start(trainer, *args, **kwargs)

    def on_test_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._plain:
            super().on_test_batch_end(trainer, *args, **kwargs)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._plain:
            super().on_test_end(trainer, pl_module)
            self._drawing = False

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._plain:
            super().on_predict_start(trainer, pl_module)
            self._drawing = self.is_enabled

    def on_predict_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._plain:
            super().on_predict_batch_start(trainer, *args, **kwargs)

    def on_predict_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._plain:
            super().on_predict_batch_end(trainer, *args, **kwargs)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._plain:
            super().on_predict_end(trainer, pl_module)
            self._drawing = False
