"""A Weights & Biases logger that never stops a run: offline by itself, failures become warnings.

Stack ``configs/logger/wandb.yaml`` on any experiment to use it::

    python -m genlit fit --config configs/toy/ring_nsgan.yaml --config configs/logger/wandb.yaml
"""

from __future__ import annotations

import os
import secrets
import shutil
import string
import sys
from argparse import Namespace
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import DummyExperiment, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

__all__ = ["WandbLogger", "wandb_credentials_found"]

# The name LightningCLI's SaveConfigCallback gives the full config it writes to trainer.log_dir.
CONFIG_FILE = "config.yaml"
_OFFLINE_MODES = ("offline", "dryrun")


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


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _run_id() -> str:
    # wandb's own id alphabet; drawn from `secrets`, so seeding the global RNG cannot repeat it.
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline by itself and never ends training.

    * Mode: offline when ``offline=True``, when ``WANDB_MODE`` is ``offline``, or when no
      credentials are found (no ``WANDB_API_KEY``, no ``wandb login``); otherwise online, and
      if the online run cannot start within ``init_timeout`` seconds (no network, bad key) the
      run starts offline instead. Each switch prints one line; at the end of an offline run the
      exact ``wandb sync <run dir>`` command is printed.
    * Everything logged: the metrics, the hyperparameters, the full ``genlit`` config (the
      ``config.yaml`` the CLI saves is logged as the run's config and kept as a run file),
      the images sent by callbacks, and the paths of saved checkpoints in the run summary
      (``checkpoints/last_path``, ``checkpoints/best_path``; no upload unless ``log_model``).
    * A tracker error while logging becomes one warning per kind of call; training goes on.
    * ``save_dir`` (what Lightning uses as ``trainer.log_dir``) is this run's own folder,
      ``<save_dir>/<project>/<run id>``, so runs never overwrite each other's config and
      pictures. W&B's files stay in ``<save_dir>/wandb``. A ``ModelCheckpoint`` without
      ``dirpath`` appends project and id to that folder again:
      ``<run folder>/<project>/<run id>/checkpoints``.

    Args:
        name: Display name of the run.
        save_dir: Root folder of the runs; W&B writes to ``<save_dir>/wandb``.
        version: Run id, to resume a run; a fresh id is drawn when ``None``.
        offline: ``True`` logs offline; ``None`` decides from ``WANDB_MODE`` and the
            credentials found; ``False`` skips the credentials check and tries online first.
        project: W&B project (``WANDB_PROJECT``, else ``lightning_logs``, when ``None``).
        log_model: Upload checkpoints as W&B artifacts (``"all"``: every one); needs an online
            run. Their paths are recorded either way.
        prefix: Prefix of every metric key.
        init_timeout: Seconds to wait for the W&B server before falling back to offline.
        **kwargs: Lightning ``WandbLogger`` or ``wandb.init`` arguments (``entity``, ``tags``,
            ``group``, ``settings``, ...).
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
        # The parent is always told "online": it would switch by setting WANDB_MODE for the
        # whole process, whereas the mode here goes to wandb.init of this run only.
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version or kwargs.pop("id", None) or _run_id(),
            offline=False,
            project=project,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        self.init_timeout = init_timeout
        self._mode, self._mode_reason = self._choose_mode(offline)
        self._failed: set[str] = set()
        self._checkpointers: dict[int, ModelCheckpoint] = {}
        self._config_logged = False
        self._sync_hint_shown = False
        if self._mode == "offline" and self._log_model:
            self._log_model = False
            self._mode_reason += "; checkpoints are not uploaded (their paths are recorded)"

    def _choose_mode(self, offline: bool | None) -> tuple[str, str]:
        """Returns ``("online" | "offline" | "disabled", why)`` before any run is started."""
        requested = str(self._wandb_init.get("mode") or os.environ.get("WANDB_MODE", "")).lower()
        if offline:
            return "offline", "offline=True"
        if requested in _OFFLINE_MODES:
            return "offline", f"WANDB_MODE={requested}"
        if requested == "disabled":
            return "disabled", "WANDB_MODE=disabled"
        if offline is None and not wandb_credentials_found():
            return "offline", "no W&B credentials found (set WANDB_API_KEY or run `wandb login`)"
        return "online", ""

    # --- the run ---------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        """Whether this run logs (or will log) offline, to be uploaded later with ``wandb sync``."""
        return self._mode == "offline"

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use: online, else offline, else disabled."""
        if self._experiment is None:
            self._start_run()
        return self._experiment

    def _start_run(self) -> None:
        if self._mode == "online":
            try:
                self._init_run(None)
                return
            except Exception as err:  # noqa: BLE001 - no network, bad key, server down
                self._mode = "offline"
                self._log_model = False
                # wandb keeps the failed run's id reserved in this process: the offline run
                # needs a new one.
                self._id = self._wandb_init["id"] = _run_id()
                _notice(f"W&B could not start an online run ({_one_line(err)}); logging offline")
        elif self._mode == "offline":
            _notice(f"logging to W&B offline: {self._mode_reason}")
        if self._mode == "offline":
            try:
                self._init_run("offline")
                return
            except Exception as err:  # noqa: BLE001 - e.g. an unwritable save_dir
                self._mode = "disabled"
                rank_zero_warn(f"W&B could not start an offline run ({_one_line(err)}); W&B is off")
        try:
            self._init_run("disabled")
        except Exception:  # noqa: BLE001 - the last resort accepts every call and does nothing
            self._experiment = DummyExperiment()

    def _init_run(self, mode: str | None) -> None:
        # LightningCLI passes every wandb.init argument, None included: None means wandb's
        # default (and an explicit anonymous=None makes recent wandb warn).
        init = {key: value for key, value in self._wandb_init.items() if value is not None}
        init.setdefault("resume", "allow")  # Lightning's default, lost when the CLI passes None
        if mode is not None:
            init["mode"] = mode
        if init.get("dir") is not None:
            # An absolute folder makes the printed `wandb sync` command work from anywhere.
            init["dir"] = os.path.abspath(init["dir"])
            # wandb looks for a git repository there and warns when the folder does not exist yet.
            os.makedirs(init["dir"], exist_ok=True)
        settings = init.get("settings")
        if settings is None or isinstance(settings, dict):
            # wandb's default waits 90 s for an unreachable server; a fallback should come sooner.
            init["settings"] = {"init_timeout": self.init_timeout, **(settings or {})}
        user_init, self._wandb_init = self._wandb_init, init
        try:
            self._experiment = None
            run = super().experiment
        except BaseException:
            self._experiment = None
            raise
        finally:
            self._wandb_init = user_init
        # The run may differ from the one asked for: wandb.run was already active, or wandb's
        # own settings (`wandb offline`, `wandb disabled`) chose the mode.
        actual = str(getattr(getattr(run, "settings", None), "mode", mode or "online")).lower()
        self._mode = "offline" if actual in _OFFLINE_MODES else actual
        if self._mode not in ("online", "offline"):
            self._mode = "disabled"

    @property
    def run_dir(self) -> str | None:
        """W&B's folder of this run (``.../wandb/offline-run-...``), once the run has started."""
        settings = getattr(self._experiment, "settings", None)
        sync_dir = getattr(settings, "sync_dir", None)
        return os.fspath(sync_dir) if sync_dir else None

    @property
    def save_dir(self) -> str | None:
        """This run's folder, ``<save_dir>/<project>/<run id>``: config, pictures, checkpoints."""
        if self._save_dir is None:
            return None
        return os.path.join(self._save_dir, str(self.name), str(self.version))

    @property
    def log_dir(self) -> str | None:
        """The same folder as :attr:`save_dir`."""
        return self.save_dir

    # --- logging, where a tracker error is a warning ----------------------------------------

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as err:  # noqa: BLE001 - the tracker must never end a run
            if action not in self._failed:
                self._failed.add(action)
                rank_zero_warn(
                    f"W&B could not {action} ({_one_line(err)}); training goes on, further "
                    "failures of this kind are not reported."
                )

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        with self._guard("log hyperparameters"):
            super().log_hyperparams(params)
        self.log_cli_config()

    @rank_zero_only
    def log_cli_config(self) -> None:
        """Logs the full config that ``genlit`` saved in this run's folder, once.

        LightningCLI writes the whole config (trainer, callbacks, model, data, seed) to
        ``config.yaml`` in ``trainer.log_dir`` but gives loggers only the model's and the
        datamodule's hyperparameters; this puts the rest in the W&B run's config too.
        """
        path = Path(self.save_dir or ".") / CONFIG_FILE
        if self._config_logged or not path.is_file():
            return
        self._config_logged = True
        with self._guard("log the config"):
            import yaml

            config = yaml.safe_load(path.read_text())
            if isinstance(config, dict):
                self.experiment.config.update(config, allow_val_change=True)
            # Kept as a run file too (files in run.dir are uploaded with the run): `genlit fit
            # --config config.yaml` reruns the experiment.
            files = getattr(self.experiment, "dir", None)
            if files and os.path.isdir(files):
                shutil.copyfile(path, os.path.join(files, CONFIG_FILE))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self._guard("log metrics"):
            super().log_metrics(metrics, step)

    @rank_zero_only
    def log_image(
        self, key: str, images: list[Any], step: int | None = None, **kwargs: Any
    ) -> None:
        with self._guard("log images"):
            super().log_image(key, images, step, **kwargs)

    @rank_zero_only
    def log_table(self, *args: Any, **kwargs: Any) -> None:
        with self._guard("log a table"):
            super().log_table(*args, **kwargs)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        with self._guard("upload checkpoints"):
            super().after_save_checkpoint(checkpoint_callback)
        self._checkpointers[id(checkpoint_callback)] = checkpoint_callback
        self._record_checkpoints(checkpoint_callback)

    def _record_checkpoints(self, checkpoint_callback: ModelCheckpoint) -> None:
        # Paths only: cheap, and they say where the weights of a dashboard curve are on disk.
        latest = getattr(checkpoint_callback, "_last_checkpoint_saved", "")
        paths = {
            "checkpoints/last_path": latest or checkpoint_callback.last_model_path,
            "checkpoints/best_path": checkpoint_callback.best_model_path,
        }
        paths = {key: str(Path(p).resolve()) for key, p in paths.items() if p}
        if paths:
            with self._guard("record checkpoint paths"):
                self.experiment.summary.update(paths)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        with self._guard("finalize the run"):
            super().finalize(status)
        with self._guard("record checkpoint paths"):
            # The best checkpoint is only known for sure once training is over.
            for checkpoint_callback in self._checkpointers.values():
                self._record_checkpoints(checkpoint_callback)
        if self.offline and self._experiment is not None and not self._sync_hint_shown:
            self._sync_hint_shown = True
            where = self.run_dir or os.path.join(str(self._save_dir), "wandb", "offline-run-*")
            _notice(f"W&B run saved offline; upload it with: wandb sync {where}")


def _notice(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"genlit: {message}", file=sys.stderr, flush=True)
