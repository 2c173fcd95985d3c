"""The ``genlit`` command: LightningCLI with genlit's models, datamodules and callbacks.

``python -m genlit fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and
``predict`` work the same way. Models and datamodules are chosen by short class name
(``GAN``, ``GaussianRing``) or, for a user's own classes, by import path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

import datamodules.images  # noqa: F401 - registers the datamodules for short names
import datamodules.toy  # noqa: F401
import genlit.callbacks  # noqa: F401 - registers the callbacks for short names
from datamodules.images import DatasetNotFoundError
from genlit.callbacks import ResumeOnInterrupt, RunSummary
from genlit.callbacks.interrupt import checkpoint_dir
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

    def _parse_ckpt_path(self) -> None:
        # Lightning would load the checkpoint's hyperparameters over the config's model; genlit
        # instead checks that the file is readable and was written by the config's model, so a
        # resume never silently trains another network than the YAML says.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path is None or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        checkpoint = read_checkpoint(Path(ckpt_path))
        saved = checkpoint.get("hyper_parameters") or {}
        if "_class_path" not in saved:
            return  # written outside the CLI: the weights are checked after instantiation
        model = self.config[subcommand]["model"]
        config = model.as_dict() if hasattr(model, "as_dict") else dict(model)
        theirs, ours = _architecture(saved["_class_path"], saved), _architecture(
            config.get("class_path", ""), config.get("init_args") or {}
        )
        if theirs != ours:
            raise GenlitError(
                f"checkpoint {ckpt_path} was written by a different model ({_describe(theirs)}) "
                f"than the config's ({_describe(ours)}): resume with the config it was trained with"
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
        trainer.callbacks.extend([RunSummary(), ResumeOnInterrupt()])
        return trainer

    def before_fit(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_writable(self.trainer)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None:
            path = find_last_checkpoint(self.trainer) if ckpt_path == "last" else Path(ckpt_path)
            check_checkpoint(path, self.model)
            self.config_init[self.subcommand]["ckpt_path"] = str(path)
            print(f"genlit: resuming from {path}", flush=True)
        steps = config.get("generator_steps")
        if steps is None:
            return
        if steps < 1:
            raise GenlitError(f"generator_steps must be >= 1, got {steps}")
        fit_loop = self.trainer.fit_loop
        fit_loop.epoch_loop.max_steps = steps * self.model.optimizer_steps_per_generator_step
        if config["trainer"].get("max_epochs") is None:
            fit_loop.max_epochs = -1


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

    Resuming then logs into a new version folder, so nothing the interrupted run wrote is
    overwritten.

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
    # A few levels only (version/checkpoints/last.ckpt, id/project/id/checkpoints/last.ckpt).
    patterns = ["last*.ckpt", *("/".join(["*"] * depth) + "/last*.ckpt" for depth in range(1, 5))]
    found = {p for root in roots if root.is_dir() for pattern in patterns for p in root.glob(pattern)}
    if not found:
        where = ", ".join(dict.fromkeys(str(r) for r in roots))
        raise GenlitError(
            f"--ckpt_path last: no last*.ckpt under {where}; train without --ckpt_path first, "
            "or give the path of a checkpoint"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


_NETWORKS = ("generator", "discriminator", "encoder", "decoder")


def _architecture(class_path: str, init_args: dict[str, Any]) -> tuple:
    """The model class and its networks (class and arguments): what the weights depend on."""
    networks = []
    for key in _NETWORKS:
        network = init_args.get(key)
        if isinstance(network, dict):
            arguments = network.get("init_args") or {}
            networks.append((key, network.get("class_path", "").rsplit(".", 1)[-1], sorted(arguments.items())))
    return (class_path.rsplit(".", 1)[-1], tuple(networks))


def _describe(architecture: tuple) -> str:
    model, networks = architecture
    return model + "".join(f", {key} {name}" for key, name, _ in networks)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Loads a checkpoint for checking, or fails in one line.

    Raises:
        GenlitError: missing, truncated or not a Lightning checkpoint.
    """
    if not path.is_file():
        raise GenlitError(f"checkpoint {path} does not exist: check the path (or use --ckpt_path last)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise GenlitError(
            f"cannot read checkpoint {path} ({reason}): the file is truncated or not a "
            "checkpoint; resume from another one, or delete it to start afresh"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GenlitError(
            f"{path} is not a Lightning checkpoint (no state_dict): give a file written by genlit fit"
        )
    return checkpoint


def check_checkpoint(path: Path, model: torch.nn.Module) -> None:
    """Fails in one line unless ``path`` is a readable Lightning checkpoint of ``model``'s shape.

    Raises:
        GenlitError: missing, truncated or foreign file (weights of another model or size).
    """
    checkpoint = read_checkpoint(path)
    expected, found = set(model.state_dict()), set(checkpoint["state_dict"])
    if expected != found:
        missing = sorted(expected - found)[:3]
        unexpected = sorted(found - expected)[:3]
        raise GenlitError(
            f"checkpoint {path} was written by a different model or network size (missing "
            f"{missing}, unexpected {unexpected}): resume with the config it was trained with"
        )
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for key, value in checkpoint["state_dict"].items():
        if hasattr(value, "shape") and value.shape != shapes[key]:
            raise GenlitError(
                f"checkpoint {path} was written by a different network size ({key}: "
                f"{tuple(value.shape)} there, {tuple(shapes[key])} here): resume with the config "
                "it was trained with"
            )


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
    except SIGTERMException:
        sys.exit(143)  # stopped by a signal; ResumeOnInterrupt said where the checkpoint is
    except (GenlitError, DatasetNotFoundError) as err:
        if os.environ.get("GENLIT_DEBUG"):
            raise
        sys.stderr.write(f"genlit: error: {err}\n")
        sys.exit(2)
