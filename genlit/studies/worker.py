"""Study workers: Optuna's storage holds the trials; each worker takes the next and runs it.

The storage (a SQLite file in the study folder by default, PostgreSQL or MySQL for many
machines) is the single source of truth. The first worker to open a study creates it and adds
every trial as ``WAITING``; a worker claims a trial by moving it to ``RUNNING`` (the storage lets
one worker win), runs ``genlit fit`` and then ``genlit evaluate`` in child processes, and records
the FID as the trial's value, or ``FAIL`` with the error line and the log's tail.

While a trial runs its worker records Optuna heartbeats. A worker that dies (killed, machine
lost) leaves a ``RUNNING`` trial whose heartbeat goes stale; any live worker then fails it and
Optuna's :class:`~optuna.storages.RetryFailedTrialCallback` adds a fresh copy, which the next
free worker runs. A trial that crashes is retried the same way, up to the study's ``retries``; a
trial that fails with genlit's own one-line error (exit code 2: a broken config) is not, since it
would fail again. Finished trials are never run again, so stopping every worker and starting
them later continues the study.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

try:  # advisory file locks (POSIX); elsewhere the retry alone handles the race
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from genlit.errors import GenlitError
from genlit.studies.spec import Job, StudySpec

LOG_TAIL_LINES = 20
GENLIT_ERROR_EXIT = 2  # genlit's one-line user error: running it again gives the same error


def default_storage(spec: StudySpec) -> str:
    """The embedded default: ``sqlite:///FOLDER/study.db``."""
    return f"sqlite:///{(spec.folder / 'study.db').absolute()}"


def open_storage(url: str, retries: int, heartbeat: int = 30) -> Any:
    """Optuna's RDB storage with heartbeats and the retry of stale (dead-worker) trials."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        # Workers wait for each other's writes instead of failing on a locked file.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(5):
        try:
            with storage_lock(url), warnings.catch_warnings():
                # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=heartbeat,
                    grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=retry_callback(retries),
                    **kwargs,
                )
        except ImportError as err:
            raise GenlitError(
                f"--storage {url}: its database driver is not installed ({err}): pip install "
                "psycopg2-binary for postgresql://, pymysql for mysql+pymysql://"
            ) from None
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's connection errors span many types
            # Workers started at once on an empty database race to create Optuna's tables:
            # the losers see a duplicate key and find the tables made when they try again.
            if attempt < 4 and _lost_creation_race(err):
                time.sleep(1.0 + attempt)
                continue
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GenlitError(f"cannot open the study storage {url}: {reason}") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Serialises a read-then-write on a SQLite storage among this machine's workers.

    SQLite takes no row lock for a read (Optuna's ``FOR UPDATE`` is ignored there, and Python's
    driver opens the transaction only at the write): two workers could both read a trial as
    ``WAITING`` and both claim it, or both fail the same stale trial and retry it twice, and two
    first opens collide on Optuna's schema stamp. An advisory lock on ``FILE.lock`` beside the
    database makes each of these one worker's at a time. Server databases (PostgreSQL, MySQL)
    lock the row themselves; there it does nothing.
    """
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:" or fcntl is None:
        yield
        return
    lock_path = Path(url.removeprefix("sqlite:///") + ".lock")
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lost_creation_race(err: Exception) -> bool:
    """Whether ``err`` is another worker's table creation seen from this one (worth a retry)."""
    text = f"{type(err).__name__} {err}".lower()
    return any(key in text for key in ("duplicate", "already exists", "unique constraint", "integrityerror"))


def retry_callback(retries: int) -> Callable[[Any, Any], None]:
    """Optuna's callback that adds a ``WAITING`` copy of a failed trial, ``retries`` times at most."""
    import optuna.storages

    # RetryHeartbeatStaleTrialCallback (optuna >= 4.9) is RetryFailedTrialCallback renamed.
    callback = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    callback = callback or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return callback(max_retry=retries)


def _distributions(spec: StudySpec, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's parameters as Optuna sees them (the dashboard shows and filters them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params: dict[str, Any] = {"config": job.config.name, "seed": job.seed, "setting": job.setting}
    distributions: dict[str, Any] = {
        "config": CategoricalDistribution([c.name for c in spec.configs]),
        "seed": CategoricalDistribution(list(spec.seeds)),
        "setting": IntDistribution(0, max(0, len(spec.settings()) - 1)),
    }
    for dimension in spec.dimensions:
        if dimension.key not in job.params:
            continue
        value = job.params[dimension.key]
        if dimension.choices is not None:
            choices = [_categorical(c) for c in dimension.choices]
            params[dimension.key] = _categorical(value)
            distributions[dimension.key] = CategoricalDistribution(choices)
        elif dimension.integer:
            params[dimension.key] = int(value)
            distributions[dimension.key] = IntDistribution(int(dimension.low), int(dimension.high))
        else:
            params[dimension.key] = float(value)
            distributions[dimension.key] = FloatDistribution(dimension.low, dimension.high, log=dimension.log)
    return params, distributions


def _categorical(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def open_study(spec: StudySpec, storage: Any, wait: float = 120.0) -> Any:
    """Creates the study with every trial ``WAITING``, or loads it when it exists.

    Two workers started at once race to create it; the loser waits until the winner has added
    the trials (the study's ``genlit_fingerprint`` attribute is written last).

    Raises:
        GenlitError: the study was made from a study file that names other trials.
    """
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    fingerprint = spec.fingerprint()
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="minimize")
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        deadline = time.monotonic() + wait
        while "genlit_fingerprint" not in study.user_attrs:
            if time.monotonic() > deadline:
                raise GenlitError(
                    f"study {spec.name} exists in the storage but its trials were never added "
                    "(its first worker stopped while creating it): delete it with optuna "
                    f"delete-study --study-name {spec.name} --storage URL, or rename the study"
                ) from None
            time.sleep(0.5)
        if study.user_attrs["genlit_fingerprint"] != fingerprint:
            raise GenlitError(
                f"study {spec.name} in this storage was made from a study file with other configs, "
                "seeds or settings (budget, arguments, evaluation): give the changed file a new "
                "name:, or delete the old study "
                f"(optuna delete-study --study-name {spec.name} --storage URL)"
            ) from None
        return study
    from optuna.trial import TrialState, create_trial

    for job in spec.jobs():
        params, distributions = _distributions(spec, job)
        study.add_trial(
            create_trial(
                state=TrialState.WAITING,
                params=params,
                distributions=distributions,
                user_attrs={"job": job.key},
            )
        )
    study.set_user_attr("genlit_budget", spec.describe_budget())
    study.set_user_attr("genlit_evaluation", spec.describe_evaluation())
    study.set_user_attr("genlit_fingerprint", fingerprint)
    return study


@dataclass
class JobState:
    """Where one job stands, over all its trials (a retry is a new trial of the same job)."""

    key: str
    state: str  # done, running, waiting, failed
    best: Any | None = None  # the COMPLETE trial with the lowest FID
    last: Any | None = None  # the newest trial


def job_states(study: Any, jobs: list[Job]) -> dict[str, JobState]:
    """Every job's state from the storage's trials."""
    from optuna.trial import TrialState

    states = {job.key: JobState(job.key, "waiting") for job in jobs}
    trials: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        trials.setdefault(trial.user_attrs.get("job", ""), []).append(trial)
    for key, state in states.items():
        mine = sorted(trials.get(key, []), key=lambda t: t.number)
        if not mine:
            continue
        state.last = mine[-1]
        done = [t for t in mine if t.state == TrialState.COMPLETE]
        if done:
            state.state, state.best = "done", min(done, key=lambda t: t.value)
        elif any(t.state == TrialState.RUNNING for t in mine):
            state.state = "running"
        elif any(t.state == TrialState.WAITING for t in mine):
            state.state = "waiting"
        else:
            state.state = "failed"
    return states


def progress_line(spec: StudySpec, study: Any) -> str:
    """``genlit study NAME: 3/8 done, 2 running, 1 failed, 2 waiting; best FID 45.2 (mnist/nsgan seed 1)``."""
    states = job_states(study, spec.jobs()).values()
    count = {s: sum(1 for j in states if j.state == s) for s in ("done", "running", "failed", "waiting")}
    line = (
        f"genlit study {spec.name}: {count['done']}/{len(states)} done, {count['running']} running, "
        f"{count['failed']} failed, {count['waiting']} waiting"
    )
    finished = [j.best for j in states if j.best is not None]
    if finished:
        best = min(finished, key=lambda t: t.value)
        line += f"; best FID {best.value:.4g} ({best.params['config']} seed {best.params['seed']})"
    return line


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # A worker killed outright takes its trial down with it (SIGTERM: genlit saves a checkpoint
    # and exits), so that no orphan keeps training a trial the study retries elsewhere.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Stopped(Exception):
    """The worker was asked to stop (Ctrl-C, SIGTERM) while a trial ran."""


class Worker:
    """Takes trials from the study and runs them on one device until none is left.

    Args:
        spec: The study file.
        study: The Optuna study (see :func:`open_study`).
        storage: Its storage (see :func:`open_storage`).
        device: ``cpu`` or ``cuda:N``.
        threads: torch threads of a trial on the CPU.
        say: Prints a line (one printer for all the workers of a process).
        stop: Set to stop: the running trial is ended and put back as waiting.
        poll: Seconds between looks at the storage while waiting for other workers.
    """

    def __init__(
        self,
        spec: StudySpec,
        study: Any,
        storage: Any,
        device: str = "cpu",
        threads: int = 1,
        say: Callable[[str], None] = print,
        stop: threading.Event | None = None,
        poll: float = 2.0,
        name: str = "worker",
    ) -> None:
        self.spec, self.study, self.device, self.threads = spec, study, device, threads
        self.say, self.stop, self.poll, self.name = say, stop or threading.Event(), poll, name
        self.storage = storage
        self.study_id = self.storage.get_study_id_from_name(spec.name)
        self.jobs = {job.key: job for job in spec.jobs()}
        self.retry = retry_callback(spec.retries)
        self.ran = 0

    def run(self) -> int:
        """Runs trials until the study has none left to run; returns how many this worker ran."""
        import optuna

        while not self.stop.is_set():
            try:
                with storage_lock(self.storage.url):  # one worker fails (and retries) a stale trial
                    optuna.storages.fail_stale_trials(self.study)
                claimed = self.claim()
            except Exception as err:  # noqa: BLE001 - a locked SQLite file, a lost connection
                if "locked" not in str(err) and "could not serialize" not in str(err):
                    raise
                time.sleep(self.poll)
                continue
            if claimed is None:
                if not self.others_running():
                    return self.ran
                self.stop.wait(self.poll)
                continue
            trial_id, number, job, prerequisite = claimed
            self.run_trial(trial_id, number, job, prerequisite)
            self.ran += 1
        return self.ran

    def others_running(self) -> bool:
        states = job_states(self.study, list(self.jobs.values()))
        return any(s.state in ("running", "waiting") for s in states.values())

    def claim(self) -> tuple[int, int, Job, Path | None] | None:
        """Moves the first runnable ``WAITING`` trial to ``RUNNING``; None when there is none."""
        from optuna.trial import TrialState

        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        states: dict[str, JobState] | None = None
        for trial in sorted(waiting, key=lambda t: t.number):
            job = self.jobs.get(trial.user_attrs.get("job", ""))
            if job is None:
                continue
            prerequisite = None
            if job.config.after is not None:
                states = states or job_states(self.study, list(self.jobs.values()))
                ready, prerequisite, why = self.prerequisite(job, states)
                if not ready and why is None:
                    continue  # its prerequisite is still to run
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            try:
                with storage_lock(self.storage.url):  # SQLite: the state is read and set by one worker
                    if not self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                        continue  # another worker took it
            except optuna_update_error():
                continue
            self.storage.record_heartbeat(trial_id)
            if job.config.after is not None and prerequisite is None:
                self.fail(trial_id, trial.number, job, why or "its prerequisite failed", retry=False)
                continue
            return trial_id, trial.number, job, prerequisite
        return None

    def prerequisite(self, job: Job, states: dict[str, JobState]) -> tuple[bool, Path | None, str | None]:
        """(ready, the prerequisite's checkpoint, why it can never be ready)."""
        mine = [s for k, s in states.items() if self.jobs[k].config.name == job.config.after and self.jobs[k].seed == job.seed]
        done = [s.best for s in mine if s.best is not None]
        if done:
            best = min(done, key=lambda t: t.value)
            return True, Path(best.user_attrs["checkpoint"]), None
        if any(s.state in ("running", "waiting") for s in mine):
            return False, None, None
        return False, None, f"its prerequisite {job.config.after} seed {job.seed} failed"

    def run_dir(self, job: Job, number: int) -> Path:
        return self.spec.folder.absolute() / "trials" / job.config.name / f"{job.version}_trial{number}"

    def run_trial(self, trial_id: int, number: int, job: Job, prerequisite: Path | None) -> None:
        run_dir = self.run_dir(job, number)
        run_dir.mkdir(parents=True, exist_ok=True)
        for key, value in {"error": None, "log_tail": None, "run_dir": str(run_dir), "device": self.device, "worker": self.name}.items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        self.say(f"{self.name}: trial {number} {job.key} started on {self.device} ({run_dir})")
        start = time.time()
        try:
            fit = self.execute(trial_id, self.fit_command(job, run_dir, prerequisite), run_dir / "fit.log")
            if fit != 0:
                self.fail(trial_id, number, job, self.error_line(run_dir / "fit.log", fit),
                          retry=fit != GENLIT_ERROR_EXIT, log=run_dir / "fit.log")
                return
            checkpoint = run_dir / "checkpoints" / "last.ckpt"
            if not checkpoint.is_file():
                self.fail(trial_id, number, job, f"genlit fit wrote no {checkpoint}", retry=False)
                return
            train_seconds = time.time() - start
            result_file = run_dir / "evaluate.json"
            evaluated = self.execute(trial_id, self.evaluate_command(job, checkpoint, result_file), run_dir / "evaluate.log")
            if evaluated != 0 or not result_file.is_file():
                self.fail(trial_id, number, job, self.error_line(run_dir / "evaluate.log", evaluated),
                          retry=evaluated != GENLIT_ERROR_EXIT, log=run_dir / "evaluate.log")
                return
        except Stopped:
            self.put_back(trial_id, number, job)
            return
        result = json.loads(result_file.read_text())
        fid = result["fid"]
        if fid is None or not math.isfinite(fid):
            self.fail(trial_id, number, job, f"the FID is {fid} (the samples are not finite?)", retry=False)
            return
        attrs = {
            "fid": fid, "kid_mean": result.get("kid_mean"), "kid_std": result.get("kid_std"),
            "features": result.get("features"), "reference": result.get("reference"),
            "num_samples": result.get("num_samples"), "checkpoint": str(checkpoint),
            "train_seconds": train_seconds, "seconds": time.time() - start,
        }  # fmt: skip
        for key, value in (result.get("copying") or {}).items():
            attrs[f"copying_{key}"] = value
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[fid])
        self.say(f"{self.name}: trial {number} {job.key} FID {fid:.4g} ({(time.time() - start) / 60:.1f} min)")
        self.say(progress_line(self.spec, self.study))

    def fit_command(self, job: Job, run_dir: Path, prerequisite: Path | None) -> list[str]:
        overlay: dict[str, Any] = {
            "trainer": {
                "logger": {
                    "class_path": "CSVLogger",
                    "init_args": {
                        "save_dir": str(self.spec.folder.absolute() / "trials"),
                        "name": job.config.name,
                        "version": run_dir.name,
                    },
                }
            }
        }
        if self.spec.quiet:
            # One measurement at the end: no in-run validation, samples or FID (they would cost
            # more than the training at small budgets); the last weights are kept.
            overlay["trainer"].update(
                limit_val_batches=0,
                enable_progress_bar=False,
                callbacks=[{"class_path": "ModelCheckpoint", "init_args": {"save_last": True}}],
            )
        overlay_file = run_dir / "study_overrides.yaml"
        overlay_file.write_text(yaml.safe_dump(overlay))
        (key, value), = (job.config.budget or self.spec.budget).items()
        budget = (
            [f"--generator_steps={value}", "--trainer.max_epochs=-1"]
            if key == "generator_steps"
            else ["--trainer.max_steps=-1", f"--trainer.max_epochs={value}"]
        )
        accelerator = ["--trainer.accelerator=cpu"] if self.device == "cpu" else [
            "--trainer.accelerator=gpu", "--trainer.devices=1"]
        after = [] if prerequisite is None else [f"--{job.config.checkpoint_argument}={prerequisite}"]
        return [
            sys.executable, "-m", "genlit", "fit",
            "--config", str(job.config.path), "--config", str(overlay_file),
            *self.spec.arguments, *job.config.arguments, *job.fit_arguments(), *after,
            f"--seed_everything={job.seed}", *accelerator, *budget,
        ]  # fmt: skip

    def evaluate_command(self, job: Job, checkpoint: Path, out: Path) -> list[str]:
        evaluation = self.spec.evaluation
        data = [a for a in (*self.spec.arguments, *job.config.arguments) if a.startswith("--data.")]
        options = [f"--{key}={evaluation[key]}" for key in ("features", "num_samples", "split", "weights_path", "batch_size") if key in evaluation]
        if evaluation.get("kid") is False:
            options.append("--no_kid")
        if evaluation.get("copying", True) is not False:
            options.append("--copying")
        return [
            sys.executable, "-m", "genlit", "evaluate",
            "--ckpt", str(checkpoint), "--config", str(job.config.path), *options, *data,
            f"--seed={job.seed}", f"--device={'cpu' if self.device == 'cpu' else 'cuda'}",
            "--json", str(out),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.device == "cpu":
            env["OMP_NUM_THREADS"] = str(self.threads)
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = self.device.split(":", 1)[1]
        return env

    def execute(self, trial_id: int, command: list[str], log: Path) -> int:
        """Runs one child process, recording heartbeats; its output goes to ``log``."""
        interval = self.storage.get_heartbeat_interval() or 30
        with log.open("a") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            child = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.environment(),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )  # fmt: skip
            while True:
                try:
                    return child.wait(timeout=min(interval, 1.0) if self.stop.is_set() else min(interval / 2, 5.0))
                except subprocess.TimeoutExpired:
                    pass
                self.storage.record_heartbeat(trial_id)
                if self.stop.is_set():
                    child.terminate()  # genlit saves a checkpoint on SIGTERM and exits
                    try:
                        child.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
                    raise Stopped

    @staticmethod
    def error_line(log: Path, code: int) -> str:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() and not line.startswith("$ ")]
        last = errors[-1] if errors else (lines[-1] if lines else "")
        return f"exit code {code}: {last}"[:500]

    def fail(self, trial_id: int, number: int, job: Job, error: str, retry: bool, log: Path | None = None) -> None:
        """Records the trial as failed with its error line and log tail; a crash is retried."""
        from optuna.trial import TrialState

        tail = ""
        if log is not None and log.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        self.storage.set_trial_user_attr(trial_id, "error", error)
        self.storage.set_trial_user_attr(trial_id, "log_tail", tail[-4000:])
        self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        retried = ""
        if retry:
            before = len(self.study.get_trials(deepcopy=False))
            self.retry(self.study, self.storage.get_trial(trial_id))
            if len(self.study.get_trials(deepcopy=False)) > before:
                retried = " (it runs again)"
            else:
                retried = f" (no retry left of {self.spec.retries})"
        self.say(f"{self.name}: trial {number} {job.key} failed{retried}: {error}")
        self.say(progress_line(self.spec, self.study))

    def put_back(self, trial_id: int, number: int, job: Job) -> None:
        """A trial stopped by the user: failed as such, and waiting again without using a retry."""
        import optuna
        from optuna.trial import TrialState

        self.storage.set_trial_user_attr(trial_id, "error", "stopped by the user")
        self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        trial = self.storage.get_trial(trial_id)
        self.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                user_attrs={"job": job.key}, system_attrs=trial.system_attrs,
            )
        )  # fmt: skip
        self.say(f"{self.name}: trial {number} {job.key} stopped; it waits for the next run")


def optuna_update_error() -> type[Exception]:
    from optuna.exceptions import UpdateFinishedTrialError

    return UpdateFinishedTrialError

