"""The ``genlit`` command: LightningCLI with genlit's models, datamodules and callbacks.

``python -m genlit fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and
``predict`` work the same way. Models and datamodules are chosen by short class name
(``GAN``, ``GaussianRing``) or, for a user's own classes, by import path.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import datamodules.images  # noqa: F401 - registers the datamodules for short names
import datamodules.toy  # noqa: F401
import genlit.callbacks  # noqa: F401 - registers the callbacks for short names
from datamodules.images import DatasetNotFoundError
from genlit.callbacks import RunSummary
from genlit.config_errors import explain
from genlit.errors import GenlitError
from genlit.evaluate import evaluate_main
from genlit.models import GenerativeModel
from genlit.sample import sample_main


class GenlitArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("GENLIT_DEBUG"):
            super().error(message, ex)
        sys.stderr.write(f"genlit: error: {explain(message)} (see --help)\n")
        sys.exit(2)


class GenlitCLI(LightningCLI):
    """LightningCLI for generative models.

    Adds ``--generator_steps N``: a training budget in generator steps, translated into
    ``trainer.max_steps`` (which, with manual optimization, counts every optimizer step:
    ``k + 1`` per generator step for a GAN with ``k`` discriminator steps).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {})
        super().__init__(
            model_class=GenerativeModel,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_class=GenlitArgumentParser,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--generator_steps",
            type=int | None,
            default=None,
            help="Training budget in generator steps (overrides trainer.max_steps).",
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if os.environ.get("GENLIT_DEBUG"):
                raise
            root = err
            while root.__cause__ is not None:  # jsonargparse wraps the class's own message
                root = root.__cause__
            raise GenlitError(str(root).splitlines()[0] if str(root) else repr(root)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(RunSummary())
        return trainer

    def before_fit(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        steps = config.get("generator_steps")
        if steps is None:
            return
        if steps < 1:
            raise GenlitError(f"generator_steps must be >= 1, got {steps}")
        fit_loop = self.trainer.fit_loop
        fit_loop.epoch_loop.max_steps = steps * self.model.optimizer_steps_per_generator_step
        if config["trainer"].get("max_epochs") is None:
            fit_loop.max_epochs = -1


def main(args: list[str] | None = None) -> None:
    """Entry point of ``genlit`` and ``python -m genlit``.

    ``genlit sample --ckpt PATH --n 64 --out grid.png`` draws from a checkpoint; every other
    subcommand (``fit``, ``validate``, ``test``, ``predict``) goes to LightningCLI.
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["sample"]:
            sample_main(argv[1:])
        elif argv[:1] == ["evaluate"]:
            evaluate_main(argv[1:])
        else:
            GenlitCLI(args=args)  # None: LightningCLI reads sys.argv itself
    except (GenlitError, DatasetNotFoundError) as err:
        if os.environ.get("GENLIT_DEBUG"):
            raise
        sys.stderr.write(f"genlit: error: {err}\n")
        sys.exit(2)
