"""The ``genlit`` command: LightningCLI with genlit's models, datamodules and callbacks.

``python -m genlit fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and
``predict`` work the same way. Models and datamodules are chosen by short class name
(``GAN``, ``GaussianRing``) or, for a user's own classes, by import path.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

import datamodules.images  # noqa: F401 - registers the datamodules for short names
import datamodules.toy  # noqa: F401
import genlit.callbacks  # noqa: F401 - registers the callbacks for short names
import genlit.networks.autoencoders  # noqa: F401 - registers the networks for short names
import genlit.networks.dcgan  # noqa: F401 - (--model.generator.help DCGANGenerator)
import genlit.networks.mlp  # noqa: F401
from datamodules.images import DatasetNotFoundError
from genlit import _compat
from genlit._compat import KeepConfigModelOnResume
from genlit.budget import winning_budget
from genlit.callbacks import Curves, ResumeOnInterrupt, RunSummary
from genlit.callbacks.first_batch import FirstBatchCheck
from genlit.callbacks.interrupt import checkpoint_dir
from genlit.callbacks.progress import with_progress_bar
from genlit.callbacks.rescue import rescue_line
from genlit.callbacks.schedule import GeneratorStepAxis
from genlit.checkpoint_io import AtomicCheckpointIO
from genlit.checkpoints import (
    check_same_architecture,
    check_usable,
    check_weights_fit,
    read_checkpoint,
)
from genlit.config_errors import explain
from genlit.console import quiet_lightning_tips
from genlit.errors import GenlitError
from genlit.evaluate import evaluate_main
from genlit.loggers import SaveConfigToRun, WandbLogger
from genlit.models import GenerativeModel
from genlit.resume import changed_settings, generator_steps_in, resumed_max_steps
from genlit.sample import sample_main


class GenlitArgumentParser(LightningArgumentParser):
    """LightningArgumentParser named ``genlit``, whose errors are one line and exit code 2.

    Every parser of the command is one (jsonargparse builds the ``--*.help CLASS`` parsers
    with the type of the parser they come from), so every usage line says ``genlit``, also
    under ``python -m genlit``, where ``sys.argv[0]`` is ``__main__.py``.
    """

    class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """jsonargparse's help, with the line breaks of the description and epilog kept."""

    main_description = "Generative models (GAN, WGAN, AE, VAE, WAE) with PyTorch Lightning."
    other_subcommands = """\
more subcommands (not LightningCLI's; each has its own --help):
    sample              Draw samples from a checkpoint written by genlit fit:
                        genlit sample --ckpt PATH --n 64 --out grid.png
    evaluate            FID and KID of a checkpoint's samples, or of a folder of
                        images, against the real images of a config's datamodule:
                        genlit evaluate --ckpt PATH --config CONFIG
    study               Run a study file's configs x seeds (x settings) on Optuna,
                        any number of workers, then report mean ± std FID:
                        genlit study run STUDY.yaml; genlit study report STUDY.yaml
"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # argparse's first positional argument is prog
            kwargs.setdefault("prog", "genlit")
        super().__init__(*args, **kwargs)

    @classmethod
    def main_parser_kwargs(cls) -> dict[str, Any]:
        """LightningCLI's ``parser_kwargs`` of the top-level parser (``genlit --help``)."""
        return {
            "description": cls.main_description,
            "epilog": cls.other_subcommands,
            "formatter_class": cls.HelpFormatter,
        }

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("GENLIT_DEBUG"):
            super().error(message, ex)
        sys.stderr.write(f"genlit: error: {explain(message)} (see --help)\n")
        sys.exit(2)


class GenlitCLI(KeepConfigModelOnResume, LightningCLI):
    """LightningCLI for generative models.

    Adds ``--generator_steps N``: a training budget in generator steps, translated into
    ``trainer.max_steps`` (which, with manual optimization, counts every optimizer step:
    ``k + 1`` per generator step for a GAN with ``k`` discriminator steps).
    """

    def __init__(self, **kwargs: Any) -> None:
        args = kwargs.get("args")
        self.argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        """The command line as given, to tell which budget came last (see :mod:`genlit.budget`)."""
        kwargs.setdefault("parser_kwargs", {})
        kwargs.setdefault("save_config_callback", SaveConfigToRun)
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
        parser.add_argument(
            "--trust_checkpoint",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="Unpickle --ckpt_path in full (weights_only=False): only for a file from someone "
            "you trust, since unpickling can run code it carries.",
        )

    def check_resume_checkpoint(self) -> None:
        """Checks ``--ckpt_path`` before anything is built: readable, and of the config's model.

        LightningCLI would load the checkpoint's hyperparameters over the config's model; genlit
        keeps the config (see :class:`genlit._compat.KeepConfigModelOnResume`) and checks that
        the file was written by the networks the YAML names.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path is None or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        trusted = self.trusts_checkpoint(self.config[subcommand])
        checkpoint = read_checkpoint(ckpt_path, trust_checkpoint=trusted)
        model = self.config[subcommand]["model"]
        config = model.as_dict() if hasattr(model, "as_dict") else dict(model)
        check_same_architecture(ckpt_path, checkpoint, _import_class(config.get("class_path", "")), config)

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
        self._record_network_configs()

    def _record_network_configs(self) -> None:
        # The model leaves its networks and optimizer factories out of its hyperparameters
        # (they are not data); under the CLI their config entries (class paths and arguments)
        # are data, and they let load_from_checkpoint rebuild the model from the file alone.
        hparams = self.model.hparams
        if "_class_path" not in hparams:
            return
        for key, value in (self.config_dump.get("model", {}).get("init_args") or {}).items():
            hparams.setdefault(key, value)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        strategy = kwargs.get("strategy", config.get("trainer", {}).get("strategy"))
        if strategy == "ddp" and getattr(self.model, "ddp_find_unused_parameters", False):
            # A two-network model leaves one network without gradient in each phase.
            kwargs["strategy"] = "ddp_find_unused_parameters_true"
        plugins = kwargs.get("plugins", config.get("trainer", {}).get("plugins")) or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            # Written next to the target and renamed: atomic wherever $TMPDIR is.
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer_config = config.get("trainer", {})
        kwargs.setdefault("callbacks", with_progress_bar(
            trainer_config.get("callbacks"), trainer_config.get("enable_progress_bar")))
        check_accelerator(kwargs.get("accelerator", trainer_config.get("accelerator")))
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # devices, strategy, precision for this machine
            if os.environ.get("GENLIT_DEBUG"):
                raise
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GenlitError(
                f"trainer: {reason.rstrip('.')}: set trainer.accelerator, trainer.devices, "
                "trainer.strategy or trainer.precision to what this machine has"
            ) from None
        if trainer.fast_dev_run:
            # A check of the code, not a run: no logger, so a ModelCheckpoint's save_last would
            # write into the current directory (Lightning saves it at the end even then).
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        trainer.callbacks.extend(
            [GeneratorStepAxis(), RunSummary(), ResumeOnInterrupt(), Curves(), FirstBatchCheck()]
        )
        return trainer

    def before_fit(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_writable(self.trainer)
        ckpt_path = config.get("ckpt_path")
        trusted = self.trusts_checkpoint(config)
        self.config_init[self.subcommand]["weights_only"] = not trusted  # Lightning's own load
        checkpoint = None
        if ckpt_path is not None:
            path = find_last_checkpoint(self.trainer) if ckpt_path == "last" else Path(ckpt_path)
            checkpoint = read_checkpoint(path, trust_checkpoint=trusted)
            check_weights_fit(path, checkpoint, self.model)
            check_usable(path, checkpoint, self.model)
            self.config_init[self.subcommand]["ckpt_path"] = str(path)
            print(f"genlit: resuming from {path}", flush=True)
            self.say_changed_settings(checkpoint)
            # Before the W&B run starts (Lightning starts it in setup): it can take the id over.
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger) and logger.continue_from(path):
                    print(f"genlit: continuing W&B run {logger.version}", flush=True)
        self.apply_budget(config, checkpoint)

    def before_validate(self) -> None:
        self._load_weights_only()

    def before_test(self) -> None:
        self._load_weights_only()

    def _load_weights_only(self) -> None:
        config = self.config[self.subcommand]
        self.config_init[self.subcommand]["weights_only"] = not self.trusts_checkpoint(config)

    @staticmethod
    def trusts_checkpoint(config: Any) -> bool:
        """Whether the resumed checkpoint may be unpickled in full (it could run code it carries).

        Only on request: ``--trust_checkpoint`` (or Lightning's own ``--weights_only=false``);
        otherwise every read, genlit's checks and Lightning's restore, is ``weights_only=True``.
        """
        return bool(config.get("trust_checkpoint")) or config.get("weights_only") is False

    def say_changed_settings(self, checkpoint: dict[str, Any]) -> None:
        """Prints, in one line, the settings the resumed run changes from the checkpoint's."""
        datamodule = self.datamodule
        batch_size = getattr(datamodule, "batch_size", None)
        changes = changed_settings(
            checkpoint, self.model.hparams, self.model.networks,
            batch_size if isinstance(batch_size, int) else None, self.trainer.world_size,
        )
        if changes and self.trainer.is_global_zero:
            done = generator_steps_in(checkpoint, self.model.optimizer_steps_per_generator_step)
            print(f"genlit: resuming with changed settings: {', '.join(changes)} (the checkpoint "
                  f"made {done} generator steps with the old ones)", flush=True)

    def apply_budget(self, config: Any, checkpoint: dict[str, Any] | None = None) -> None:
        """Applies the budget given last: ``generator_steps`` or Lightning's own keys.

        A resumed run's ``generator_steps`` counts the checkpoint's generator steps too, at the
        rate they were made: resumed with another ``k``, it still ends after that many.
        ``--trainer.fast_dev_run`` always wins (it is a check, not a budget).
        """
        steps = config.get("generator_steps")
        if steps is not None and steps < 1:
            raise GenlitError(f"generator_steps must be >= 1, got {steps}")
        if steps is None or self.trainer.fast_dev_run:
            return
        last = winning_budget(self.argv)
        per_step = self.model.optimizer_steps_per_generator_step
        if last is not None and last.key != "generator_steps":
            unit = ""
            if last.key == "trainer.max_steps":
                unit = f" optimizer steps = {int(last.value) // per_step} generator steps"
            if self.trainer.is_global_zero:
                print(f"genlit: budget {last.key}={last.value}{unit} from {last.source} (given "
                      f"after generator_steps={steps}, which is ignored)", flush=True)
            return
        fit_loop = self.trainer.fit_loop
        if checkpoint is None:
            fit_loop.epoch_loop.max_steps = steps * per_step
        else:
            fit_loop.epoch_loop.max_steps = resumed_max_steps(checkpoint, steps, per_step)
        if config["trainer"].get("max_epochs") is None:
            fit_loop.max_epochs = -1


def check_accelerator(accelerator: Any) -> None:
    """Fails in one line when ``trainer.accelerator`` names a GPU this machine does not have.

    Raises:
        GenlitError: naming the setting and what is available.
    """
    name = str(accelerator).lower() if isinstance(accelerator, str) else None
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        mps = torch.backends.mps.is_available()
        if name == "gpu" and mps:
            return  # Lightning's "gpu" is Apple's MPS there
        raise GenlitError(
            f"--trainer.accelerator={accelerator}: no CUDA GPU is available here "
            "(torch.cuda.is_available() is False): use --trainer.accelerator=cpu, or auto to take "
            "a GPU where there is one"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise GenlitError(
            f"--trainer.accelerator={accelerator}: Apple's MPS is not available here: use "
            "--trainer.accelerator=cpu or auto"
        )


def check_writable(trainer: Trainer) -> None:
    """Fails before training when a folder the run writes to cannot be created or written.

    Raises:
        GenlitError: naming the folder and the setting that chose it.
    """
    folders = [("trainer.default_root_dir", trainer.default_root_dir)]
    for logger in trainer.loggers:
        folders.append(("trainer.logger.init_args.save_dir", logger.save_dir))
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath:
        folders.append(("the ModelCheckpoint's dirpath", dirpath))
    for key, folder in folders:
        if not folder:
            continue
        path = Path(folder).absolute()
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            why = "is a file" if existing.exists() and not existing.is_dir() else "is not writable"
            raise GenlitError(
                f"cannot write the run to {path}: {existing} {why}; set {key} to a writable folder"
            )


def find_last_checkpoint(trainer: Trainer) -> Path:
    """The newest ``last*.ckpt`` of this experiment, whichever run (logger version) wrote it.

    Every ``genlit fit`` leaves one (``ResumeOnInterrupt``). Resuming with a CSV or TensorBoard
    logger then logs into a new version folder, so nothing the interrupted run wrote is
    overwritten; a W&B logger continues the run the checkpoint belongs to, under its run id
    (``WandbLogger.continue_from``).

    Raises:
        GenlitError: when there is none.
    """
    roots = [checkpoint_dir(trainer)]
    logger = trainer.logger
    if logger is None:
        roots.append(Path(trainer.default_root_dir))
    elif getattr(logger, "root_dir", None):  # CSV, TensorBoard: save_dir/name
        roots.append(Path(logger.root_dir))
    else:  # W&B and others: save_dir/name (the project)
        roots.append(Path(logger.save_dir or trainer.default_root_dir) / (logger.name or ""))
    # A few levels only (version/checkpoints/last.ckpt, project/id/checkpoints/last.ckpt).
    patterns = ["last*.ckpt", *("/".join(["*"] * depth) + "/last*.ckpt" for depth in range(1, 5))]
    found = {p for root in roots if root.is_dir() for pattern in patterns for p in root.glob(pattern)}
    if not found:
        where = ", ".join(dict.fromkeys(str(r) for r in roots))
        raise GenlitError(
            f"--ckpt_path last: no last*.ckpt under {where}; train without --ckpt_path first, "
            "or give the path of a checkpoint"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def _import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return GenerativeModel


def _quiet_known_warnings() -> None:
    # With manual optimization a checkpoint always holds the weights after the step's updates,
    # which is what genlit's exact resume relies on; Lightning's warning about it is noise here.
    warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
    # genlit's datamodules resume mid-epoch through their sampler (datamodules/_resume.py).
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``genlit`` and ``python -m genlit``.

    ``genlit sample --ckpt PATH --n 64 --out grid.png`` draws from a checkpoint; every other
    subcommand (``fit``, ``validate``, ``test``, ``predict``) goes to LightningCLI.
    """
    from datamodules.images import DataError
    from genlit.config_errors import check_config_files

    argv = sys.argv[1:] if args is None else list(args)
    _quiet_known_warnings()
    quiet_lightning_tips()
    _compat.skip_failing_nvml_probe()
    try:
        if argv[:1] == ["predict"]:
            raise GenlitError(
                "genlit predict has nothing to predict for a generative model: draw samples with "
                "genlit sample --ckpt PATH --n N --out DIR/ (or .png, .npz)"
            )
        if argv[:1] == ["sample"]:
            sample_main(argv[1:])
        elif argv[:1] == ["evaluate"]:
            evaluate_main(argv[1:])
        elif argv[:1] == ["study"]:
            from genlit.studies.cli import study_main

            study_main(argv[1:])
        else:
            # jsonargparse reports a bad YAML file without its name; read them first.
            check_config_files(argv)
            # args None: LightningCLI reads sys.argv itself
            GenlitCLI(args=args, parser_kwargs=GenlitArgumentParser.main_parser_kwargs())
    except SIGTERMException:
        sys.exit(143)  # stopped by a signal; ResumeOnInterrupt said where the checkpoint is
    except (GenlitError, DatasetNotFoundError, DataError) as err:
        if os.environ.get("GENLIT_DEBUG"):
            raise
        rescued = rescue_line(err) if getattr(err, "genlit_rescue", {}).get("saved") else None
        sys.stderr.write(f"genlit: error: {rescued or err}\n")
        sys.exit(2)
    except Exception as err:
        # An evaluation, a logger or a callback failed mid-run: ResumeOnInterrupt saved the
        # weights (or said why not) and marked the error; a failure of training is raised.
        line = rescue_line(err)
        if line is None or os.environ.get("GENLIT_DEBUG"):
            raise
        sys.stderr.write(f"genlit: error: {line}\n")
        sys.exit(1)
