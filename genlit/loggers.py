"""A Weights & Biases logger that goes offline by itself and never stops a run.

Stack ``configs/logger/wandb.yaml`` on any experiment to use it::

    python -m genlit fit --config configs/toy/ring_nsgan.yaml --config configs/logger/wandb.yaml
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from genlit._compat import wandb_init_arguments
from genlit.callbacks import images

__all__ = ["SaveConfigToRun", "WandbLogger", "wandb_credentials_found"]


def wandb_credentials_found() -> bool:
    """Whether ``wandb.init`` would find an API key without prompting.

    Asks wandb's own lookup (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, the netrc entry
    ``wandb login`` writes, the settings file) for the configured host. Versions of wandb
    without that lookup get the two usual places: ``WANDB_API_KEY`` and the netrc file.
    """
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        host = wandb_setup.singleton().settings.base_url
        auth = wbauth.authenticate_session(
            host=host, source="genlit", prompt=False, update_session=False
        )
        return auth is not None
    except (ImportError, AttributeError, TypeError):
        return _credentials_in_env_or_netrc()
    except Exception:  # noqa: BLE001 - a malformed key is still a key: wandb.init reports it
        return True


def _credentials_in_env_or_netrc() -> bool:
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def _choose_mode(offline: bool | None, requested: str | None) -> tuple[str, str]:
    """``("online" | "offline" | "disabled", why)``, decided before any run is started."""
    requested = str(requested or os.environ.get("WANDB_MODE", "")).lower()
    if offline:
        return "offline", "offline=True"
    if requested in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={requested}"
    if requested == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if offline is None and not wandb_credentials_found():
        return "offline", "no W&B credentials found (set WANDB_API_KEY or run `wandb login`)"
    return "online", ""


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _notice(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"genlit: {message}", file=sys.stderr, flush=True)


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline by itself and never ends training.

    * Mode: offline when ``offline=True``, when ``WANDB_MODE`` is ``offline``, or when no
      credentials are found (no ``WANDB_API_KEY``, no ``wandb login``); otherwise online, and
      if the online run cannot start within ``init_timeout`` seconds (no network, bad key) the
      run starts offline instead (``log_model`` checkpoints then wait in the offline run for
      ``wandb sync``). Each switch prints one line; at the end of an offline run the exact
      ``wandb sync <run dir>`` command is printed.
    * A tracker error while logging (every ``log_*`` ends in :meth:`log_metrics`) or while
      finishing the run becomes one warning per kind of error; training goes on.
    * The folders are Lightning's: W&B writes to ``<save_dir>/wandb``; the run's own folder
      (:attr:`log_dir`) is ``<save_dir>/<project>/<run id>``, where ``ModelCheckpoint``
      without ``dirpath`` writes ``checkpoints/``, and where genlit puts pictures and, with
      :class:`SaveConfigToRun`, ``config.yaml``. The paths of saved checkpoints go to the run
      summary (``checkpoints/last_path``, ``checkpoints/best_path``) when the run ends.
    * Resume: ``genlit fit --ckpt_path last`` (or a checkpoint's path) continues the run whose
      folder holds the checkpoint, under the same run id (:meth:`continue_from`); offline,
      each resumed piece is one more ``offline-run-*-<id>`` folder, which ``wandb sync``
      uploads in order into that one run.

    Args:
        name: Display name of the run.
        save_dir: Root folder of the runs; W&B writes to ``<save_dir>/wandb``.
        version: Run id, to resume a run; W&B draws a fresh id when ``None``.
        offline: ``True`` logs offline; ``None`` decides from ``WANDB_MODE`` and the
            credentials found; ``False`` skips the credentials check and tries online first.
        project: W&B project (``WANDB_PROJECT``, else ``lightning_logs``, when ``None``).
        log_model: Upload checkpoints as W&B artifacts (``"all"``: every one); needs an online
            run. Their paths are recorded either way.
        prefix: Prefix of every metric key.
        init_timeout: Seconds to wait for the W&B server before falling back to offline.
        **kwargs: Lightning ``WandbLogger`` or ``wandb.init`` arguments (``entity``, ``tags``,
            ``group``, ``settings``, ...); ``None`` values mean wandb's defaults.

    Raises:
        ValueError: ``log_model`` asked of an ``offline=True`` run.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | Path = ".",
        version: str | None = None,
        offline: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        prefix: str = "",
        init_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        if offline and log_model:
            raise ValueError(
                f"log_model={log_model!r} needs an online run: checkpoints cannot be uploaded "
                "offline. Set offline to null or false, or log_model to false."
            )
        # LightningCLI passes every wandb.init argument, None included: None means wandb's
        # default (and would replace Lightning's own, resume="allow").
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        requested = kwargs.pop("mode", None)
        self._mode, self._mode_reason = _choose_mode(offline, requested)
        if requested or self._mode != "online":
            kwargs["mode"] = self._mode
        if self._mode != "online" and log_model:
            log_model = False
            self._mode_reason += "; checkpoints are not uploaded (their paths are recorded)"
        settings = kwargs.get("settings")
        if settings is None or isinstance(settings, dict):
            # wandb's default waits 90 s for an unreachable server; a fallback should come sooner.
            kwargs["settings"] = {"init_timeout": init_timeout, **(settings or {})}
        # The parent is always told "online": it would switch by setting WANDB_MODE for the
        # whole process, whereas the mode here goes to wandb.init of this run only.
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=False,
            project=project,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        init = wandb_init_arguments(self)
        if init.get("anonymous") is None:  # Lightning always passes it; wandb warns it is unused
            init.pop("anonymous", None)
        self.init_timeout = init_timeout
        self._run_started = False
        self._checkpointers: dict[int, ModelCheckpoint] = {}
        self._failures_reported: set[str] = set()
        self._sync_hint_shown = False
        self._resumed = False

    @property
    def offline(self) -> bool:
        """Whether this run logs (or will log) offline, to be uploaded later with ``wandb sync``."""
        return self._mode == "offline"

    @property
    def version(self) -> str | None:
        """The run id: the started run's, else the one given or found by :meth:`continue_from`."""
        if self._resumed and not self._run_started:
            return wandb_init_arguments(self)["id"]
        return super().version

    @property
    def resumed(self) -> bool:
        """Whether this logger continues the run of an earlier ``fit`` (:meth:`continue_from`)."""
        return self._resumed

    def continue_from(self, checkpoint: str | Path) -> bool:
        """Continues the W&B run that wrote ``checkpoint``, under its id, if it has not started.

        The checkpoint belongs to a run of this logger when it lies in
        ``<save_dir>/<project>/<id>/checkpoints/`` and ``<save_dir>/wandb`` holds W&B's folder of
        run ``<id>``. The run then starts with that id and ``resume="allow"`` (online, W&B appends
        to it; offline, ``wandb sync`` does), and :attr:`log_dir` is that run's folder again. Any
        other checkpoint (a CSV or TensorBoard logger's, another project's, a ``dirpath`` of its
        own), or a logger given another ``version``, keeps a new run.

        Args:
            checkpoint: The checkpoint the fit resumes from.

        Returns:
            Whether this logger now continues that run.
        """
        if self._run_started:
            rank_zero_warn("W&B run already started: it cannot continue the checkpoint's run")
            return False
        if self.save_dir is None:
            return False
        folder = Path(checkpoint).resolve().parent
        run_id = folder.parent.name
        runs = Path(self.save_dir).resolve() / str(self.name)
        if folder.name != "checkpoints" or folder.parent.parent != runs:
            return False
        if self.version not in (None, run_id):
            return False
        wandb_dir = Path(self.save_dir) / "wandb"
        if not any(wandb_dir.glob(f"*run-*-{glob.escape(run_id)}")):  # offline-run-..., run-...
            return False
        init = wandb_init_arguments(self)
        init["id"] = run_id
        if init.get("resume") not in ("allow", "must"):
            init["resume"] = "allow"
        self._resumed = True
        return True

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use: online, else offline, else disabled."""
        if not self._run_started:
            self._start_run()
        return super().experiment

    def _start_run(self) -> None:
        init = wandb_init_arguments(self)
        if self.save_dir:
            # wandb looks for a git repository there and warns when the folder does not exist.
            os.makedirs(self.save_dir, exist_ok=True)
        if self._mode == "offline":
            _notice(f"logging to W&B offline: {self._mode_reason}")
        while True:
            try:
                run = super().experiment
                break
            except Exception as err:  # noqa: BLE001 - no network, bad key, server down, full disk
                if self._mode == "online":
                    continued = f" as a new run, not run {init['id']}" if self._resumed else ""
                    _notice(
                        f"W&B could not start an online run ({_one_line(err)}); logging offline"
                        f"{continued}"
                    )
                    # wandb keeps the failed run's id reserved in this process: it draws another.
                    init.update(mode="offline", id=None)
                    self._resumed = False
                elif self._mode == "offline":
                    rank_zero_warn(
                        f"W&B could not start an offline run ({_one_line(err)}); W&B is off"
                    )
                    init["mode"] = "disabled"
                else:
                    raise
                self._mode = init["mode"]
        self._run_started = True
        # wandb may have chosen another mode than asked (`wandb offline`, an active wandb.run).
        mode = str(getattr(getattr(run, "settings", None), "mode", self._mode))
        self._mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)

    @property
    def run_dir(self) -> str | None:
        """W&B's folder of this run (``.../wandb/offline-run-...``), once the run has started."""
        if not self._run_started:
            return None
        sync_dir = getattr(getattr(self.experiment, "settings", None), "sync_dir", None)
        return os.path.abspath(sync_dir) if sync_dir else None

    @property
    def log_dir(self) -> str | None:
        """This run's folder, ``<save_dir>/<project>/<run id>``, once the id is known.

        Lightning's own: ``ModelCheckpoint`` without ``dirpath`` saves to its ``checkpoints``.
        """
        if self.save_dir is None or self.version is None:
            return None
        return os.path.join(self.save_dir, str(self.name), str(self.version))

    @contextmanager
    def _tracker_errors_are_warnings(self) -> Iterator[None]:
        # The one failure boundary: W&B's service process already absorbs network and disk
        # errors, but a finished run, a dead service or a media file that cannot be copied
        # still raise here, in the training process.
        try:
            yield
        except Exception as err:  # noqa: BLE001 - the tracker must never end a run
            what = _one_line(err)
            if what not in self._failures_reported:
                self._failures_reported.add(what)
                rank_zero_warn(
                    f"W&B could not log ({what}); training goes on, further failures of this "
                    "kind are not reported."
                )

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Logs metrics; Lightning's ``log_image``, ``log_table``, ``log_text``... end here too.

        Args:
            metrics: Key to value (a number, or a ``wandb`` media object).
            step: The trainer's step, logged as ``trainer/global_step``.
        """
        with self._tracker_errors_are_warnings():
            super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Uploads the checkpoint when ``log_model`` asks; its path is recorded at the end."""
        super().after_save_checkpoint(checkpoint_callback)
        self._checkpointers[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Uploads ``log_model`` checkpoints, records the checkpoint paths, tells how to sync.

        Args:
            status: ``"success"``, ``"failed"`` or ``"finished"``, as the trainer says.
        """
        if not self._run_started:
            return
        with self._tracker_errors_are_warnings():
            super().finalize(status)
            for callback in self._checkpointers.values():
                # With nothing monitored, Lightning's "best" checkpoint is the newest one.
                newest = callback.last_model_path or (
                    callback.best_model_path if callback.monitor is None else ""
                )
                paths = {
                    "checkpoints/last_path": newest,
                    "checkpoints/best_path": callback.best_model_path,
                }
                resolved = {key: str(Path(p).resolve()) for key, p in paths.items() if p}
                self.experiment.summary.update(resolved)
        if self.offline and not self._sync_hint_shown:
            self._sync_hint_shown = True
            where = self.run_dir or os.path.join(
                os.path.abspath(self.save_dir or "."), "wandb", "offline-run-*"
            )
            if self._resumed and self.version:  # every piece of the run, in order
                where = os.path.join(os.path.dirname(where), f"offline-run-*-{self.version}")
            _notice(f"W&B run saved offline; upload it with: wandb sync {where}")


class SaveConfigToRun(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that keeps the full config with each run.

    ``config.yaml`` goes to the run's folder (``genlit.callbacks.images.run_dir``): the same as
    ``trainer.log_dir`` for every logger but W&B's, whose ``trainer.log_dir`` is the
    ``save_dir`` shared by all its runs (Lightning issue #17168: a second run would stop on
    the first one's file). For each W&B logger, the whole config (trainer, callbacks, model,
    data, seed; loggers get only the model's and datamodule's hyperparameters otherwise) goes
    to the run's config, and a copy of ``config.yaml`` to the run's files:
    ``genlit fit --config config.yaml`` reruns the experiment.

    A W&B run resumed under its own id (:meth:`WandbLogger.continue_from`) comes back to the
    folder that holds the first ``fit``'s ``config.yaml``: that file is kept, and the resumed
    ``fit``'s config goes next to it as ``config-resume-1.yaml`` (then ``-2``, ...), so every
    command the run was trained with stays on record. Anywhere else an existing file stops the
    run before training, as Lightning's callback does, unless ``overwrite`` is set; CSV and
    TensorBoard runs resume into a new version folder and never meet one.

    Used as ``LightningCLI(save_config_callback=SaveConfigToRun)``; arguments as Lightning's.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Saves ``config.yaml`` in the run's folder and hands the config to W&B, once."""
        if self.already_saved:
            return
        if self.save_to_log_dir:
            folder = trainer.strategy.broadcast(str(images.run_dir(trainer)))
            path = os.path.join(folder, self.config_filename)
            exists = trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(path))
            resumed = exists and trainer.strategy.broadcast(_resumes_run_in(trainer, folder))
            if resumed and not self.overwrite:
                path = trainer.strategy.broadcast(
                    _next_free(path) if trainer.is_global_zero else ""
                )
            elif exists and not self.overwrite:
                raise RuntimeError(
                    f"{path} exists: a run already saved its config there. Give the logger a new "
                    'version, or set `save_config_kwargs={"overwrite": True}`.'
                )
            if trainer.is_global_zero:
                os.makedirs(folder, exist_ok=True)
                self.parser.save(
                    self.config,
                    path,
                    skip_none=False,
                    overwrite=self.overwrite,
                    multifile=self.multifile,
                )
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Hands the full config to every W&B logger's run, as its config and as a file.

        Args:
            trainer: The trainer, for its loggers.
            pl_module: The model (unused).
            stage: ``"fit"``, ``"validate"``, ... (unused).
        """
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, _LightningWandbLogger):
                run = logger.experiment
                run.config.update(yaml.safe_load(text), allow_val_change=True)
                if os.path.isdir(run.dir):  # a disabled run has none
                    # Files in the run's folder are uploaded with the run (or by `wandb sync`).
                    Path(run.dir, self.config_filename).write_text(text)


def _resumes_run_in(trainer: Trainer, folder: str) -> bool:
    """Whether a W&B logger of ``trainer`` continues the earlier run whose folder is ``folder``."""
    return any(
        isinstance(logger, WandbLogger)
        and logger.resumed
        and logger.log_dir is not None
        and os.path.abspath(logger.log_dir) == os.path.abspath(folder)
        for logger in trainer.loggers
    )


def _next_free(path: str) -> str:
    """``config-resume-<n>.yaml`` next to ``config.yaml``, the first ``n`` not taken."""
    stem, suffix = os.path.splitext(path)
    n = 1
    while os.path.exists(f"{stem}-resume-{n}{suffix}"):
        n += 1
    return f"{stem}-resume-{n}{suffix}"
