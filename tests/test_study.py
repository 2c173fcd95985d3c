"""``genlit study``: trials run exactly once by many workers, retried when lost, reported.

The studies train two tiny GANs on scikit-learn's digits (always available) for a few
generator steps; every worker is a real ``genlit study run`` process, every trial a real
``genlit fit`` and ``genlit evaluate``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from genlit.errors import GenlitError
from genlit.studies.report import markdown, rows
from genlit.studies.spec import load_study
from genlit.studies.worker import default_storage, job_states, open_storage, open_study

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--model.init_args.generator.init_args.width=8",
    "--model.init_args.discriminator.init_args.width=8",
    "--data.init_args.batch_size=32",
]
pytestmark = pytest.mark.xdist_group("study")  # the studies' processes share one worker's cores


def write_study(folder: Path, configs: list, seeds: list[int], steps: int = 5, **extra) -> Path:
    study = {
        "name": extra.pop("name", "test"),
        "folder": str(folder / "out"),
        "configs": configs,
        "seeds": seeds,
        "budget": {"generator_steps": steps},
        "evaluation": {"num_samples": 100, "kid": False},
        "arguments": TINY,
        **extra,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def worker(study: Path, *args: str) -> subprocess.Popen:
    """A ``genlit study run`` process whose output goes to a file (a pipe nobody reads can fill)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tempfile.NamedTemporaryFile("w+", prefix="worker-", suffix=".log", dir=study.parent, delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "genlit", "study", "run", str(study), "--devices", "cpu", *args],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log.close()
    process.log_path = Path(log.name)  # type: ignore[attr-defined]
    return process


def output(process: subprocess.Popen) -> str:
    return process.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    process.wait(timeout=timeout)
    out = output(process)
    assert process.returncode == 0, out[-3000:]
    return out


def stored(path: Path, storage: str | None = None):
    """The study as its workers see it, opened the way they open it."""
    spec = load_study(path)
    url = storage or default_storage(spec)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url, spec.retries))
    return spec, study


def trials_per_job(study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    jobs: dict[str, list] = {}
    for trial in study.get_trials():
        jobs.setdefault(trial.user_attrs["job"], []).append(trial)
    return jobs


GANS = ["configs/digits/nsgan.yaml", "configs/digits/lsgan.yaml"]


def check_each_once(study, expected: int) -> None:
    jobs = trials_per_job(study)
    assert len(jobs) == expected
    for key, trials in jobs.items():
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE], key
        run_dir = Path(trials[0].user_attrs["run_dir"])
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert (run_dir / "fit.log").read_text().count("$ ") == 1  # one genlit fit, not two
        assert trials[0].value == trials[0].user_attrs["fid"] > 0


OPEN_AND_CREATE = """
import sys, optuna
from genlit.studies.worker import open_storage
try:
    optuna.create_study(storage=open_storage(sys.argv[1], 1), study_name="race")
except optuna.exceptions.DuplicatedStudyError:
    pass
"""


def test_workers_opening_a_new_sqlite_storage_at_once_all_succeed(tmp_path):
    # Optuna creates its tables and stamps their version on first open; unserialised, some of
    # four processes opening one new file at once fail (a unique constraint on the stamp).
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
        processes = [
            subprocess.Popen([sys.executable, "-c", OPEN_AND_CREATE, url], cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        for process in processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]


CLAIM_ALL = """
import sys, time
from genlit.studies.spec import load_study
from genlit.studies.worker import Worker, default_storage, open_storage, open_study
spec = load_study(sys.argv[1])
storage = open_storage(default_storage(spec), spec.retries)
worker = Worker(spec, open_study(spec, storage), storage)
time.sleep(float(sys.argv[2]) - time.time())  # every process claims from the same moment
claimed = []
while (got := worker.claim()) is not None:
    claimed.append(got[1])
print(" ".join(map(str, claimed)))
"""


def test_workers_claiming_at_once_never_take_the_same_trial(tmp_path):
    # SQLite takes no row lock for Optuna's read of a trial's state: unserialised, two workers
    # both read WAITING and both claim the trial.
    path = write_study(tmp_path, GANS, list(range(6)))  # 12 waiting trials
    open_study(load_study(path), open_storage(default_storage(load_study(path)), 1))
    start = str(time.time() + 8)
    processes = [
        subprocess.Popen([sys.executable, "-c", CLAIM_ALL, str(path), start], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]  # fmt: skip
    claimed = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        claimed += [int(n) for n in out.split()]
    assert sorted(claimed) == list(range(12))  # each trial by exactly one worker


def test_two_workers_at_once_run_each_trial_once(tmp_path):
    path = write_study(tmp_path, GANS, [0, 1])
    first, second = worker(path), worker(path)  # both race to create the study
    outputs = [finish(first), finish(second)]
    _, study = stored(path)
    check_each_once(study, 4)
    ran = [int(out.split("this run ran ")[1].split()[0]) for out in outputs]
    assert sum(ran) == 4, outputs
    # Run again: nothing is redone.
    again = finish(worker(path))
    assert "this run ran 0 trial(s)" in again
    assert len(stored(path)[1].get_trials()) == 4


def running_trial(study_file: Path, process: subprocess.Popen, timeout: float = 300):
    """The trial ``process`` runs once its first trial has finished."""
    database = Path(default_storage(load_study(study_file)).removeprefix("sqlite:///"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the worker ended early:\n{output(process)[-3000:]}"
        running, done = [], []
        if database.is_file():
            try:
                trials = stored(study_file)[1].get_trials()  # one snapshot, not two that race
                running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
                done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            except KeyError:  # the worker has made the tables but not yet the study
                pass
        if running and done:
            return running[0]
        time.sleep(0.3)
    raise AssertionError(f"no trial started after the first finished:\n{output(process)[-3000:]}")


def children_alive(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_leaves_a_trial_that_a_restarted_worker_retries(tmp_path):
    # A few steps suffice: a trial is RUNNING from its claim through genlit fit's start-up.
    path = write_study(tmp_path, GANS[:1], [0, 1], steps=20, retries=1)
    first = worker(path, "--heartbeat", "1")
    trial = running_trial(path, first)  # seed 0 finished, seed 1 running
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    run_dir = trial.user_attrs["run_dir"]
    deadline = time.monotonic() + 60
    while children_alive(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not children_alive(run_dir), "the killed worker's genlit fit kept running"

    out = finish(worker(path, "--heartbeat", "1"))
    assert "this run ran 1 trial(s)" in out, out  # the retry only: seed 0 is not redone
    _, study = stored(path)
    jobs = trials_per_job(study)
    states = {key: [t.state.name for t in trials] for key, trials in jobs.items()}
    assert states == {
        "digits/nsgan:setting0:seed0": ["COMPLETE"],
        "digits/nsgan:setting0:seed1": ["FAIL", "COMPLETE"],  # stale heartbeat, then its retry
    }
    retried = jobs["digits/nsgan:setting0:seed1"][1]
    assert retried.system_attrs["failed_trial"] == trial.number
    assert Path(retried.user_attrs["run_dir"]) != Path(run_dir)  # the lost run's files are kept


def test_after_runs_a_config_on_its_prerequisites_checkpoint_and_fails_when_that_failed(tmp_path):
    small_ae = [
        "--model.init_args.encoder.init_args.width=8",
        "--model.init_args.decoder.init_args.width=8",
        "--model.init_args.ot_codes=200",
        "--model.init_args.ot_max_seconds=20",
    ]
    small_gan = [
        "--model.init_args.encoder.init_args.width=8",
        "--model.init_args.generator.init_args.width=8",
        "--model.init_args.discriminator.init_args.width=8",
    ]
    after = {"checkpoint_argument": "model.init_args.autoencoder_checkpoint"}
    configs = [
        # Listed before their prerequisites: the study orders them.
        {"config": "configs/digits/aeot_gan.yaml", "after": "configs/digits/aeot.yaml", "arguments": small_gan, **after},
        {"config": "configs/digits/aeot_gan.yaml", "name": "digits/orphan", "after": "digits/broken_aeot",
         "arguments": small_gan, **after},
        {"config": "configs/digits/aeot.yaml", "budget": {"epochs": 1}, "arguments": small_ae},
        {"config": "configs/digits/aeot.yaml", "name": "digits/broken_aeot", "budget": {"epochs": 1},
         "arguments": [*small_ae, "--model.init_args.ot_cods=5"]},
    ]  # fmt: skip
    path = write_study(tmp_path, configs, [0], arguments=[])
    first, second = worker(path), worker(path)  # the second waits for the prerequisite the first runs
    outputs = [finish(first), finish(second)]
    jobs = trials_per_job(stored(path)[1])
    states = {key: [t.state.name for t in trials] for key, trials in jobs.items()}
    assert states == {
        "digits/aeot:setting0:seed0": ["COMPLETE"],
        "digits/aeot_gan:setting0:seed0": ["COMPLETE"],
        "digits/broken_aeot:setting0:seed0": ["FAIL"],
        "digits/orphan:setting0:seed0": ["FAIL"],
    }, outputs
    prerequisite = jobs["digits/aeot:setting0:seed0"][0]
    gan = jobs["digits/aeot_gan:setting0:seed0"][0]
    assert gan.datetime_start >= prerequisite.datetime_complete
    fit_log = (Path(gan.user_attrs["run_dir"]) / "fit.log").read_text()
    assert f"--model.init_args.autoencoder_checkpoint={prerequisite.user_attrs['checkpoint']}" in fit_log
    orphan = jobs["digits/orphan:setting0:seed0"][0]
    assert orphan.user_attrs["error"] == "its prerequisite digits/broken_aeot seed 0 failed"
    assert "run_dir" not in orphan.user_attrs  # it never ran


def test_a_broken_config_fails_with_its_error_line_and_the_study_goes_on(tmp_path):
    broken = {"config": GANS[1], "name": "digits/broken", "arguments": ["--model.init_args.los=hinge"]}
    path = write_study(tmp_path, [GANS[0], broken], [0], retries=2)
    out = finish(worker(path))
    _, study = stored(path)
    jobs = trials_per_job(study)
    assert [t.state.name for t in jobs["digits/nsgan:setting0:seed0"]] == ["COMPLETE"]
    failed = jobs["digits/broken:setting0:seed0"]
    assert [t.state.name for t in failed] == ["FAIL"]  # a config error is not retried
    error = failed[0].user_attrs["error"]
    assert error.startswith("exit code 2: genlit: error:") and "los" in error
    assert "los" in failed[0].user_attrs["log_tail"]
    assert "digits/broken:setting0:seed0 failed" in out

    report = subprocess.run(
        [sys.executable, "-m", "genlit", "study", "report", str(path)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "| nsgan | digits | 1/1 |" in report.stdout
    assert "| broken | digits | 0/1 |" in report.stdout
    assert "digits/broken:setting0:seed0 (trial 1): exit code 2: genlit: error:" in report.stdout
    folder = tmp_path / "out"
    for name in ("report.md", "report.csv", "trials.csv", "fid_boxplot.png", "best_samples.png"):
        assert (folder / name).is_file(), name
    assert (folder / "report.md").read_text() in report.stdout


def test_report_of_an_unfinished_study_says_what_is_running_and_waiting(tmp_path):
    path = write_study(tmp_path, GANS, [0, 1, 2])
    spec = load_study(path)
    storage = open_storage(default_storage(spec), spec.retries)
    study = open_study(spec, storage)
    waiting = study.get_trials()
    assert len(waiting) == 6 and all(t.state.name == "WAITING" for t in waiting)
    # Two trials done, one running, one failed by hand; the rest waiting.
    ids = [storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("test"), t.number) for t in waiting]
    for trial_id, value, c_t in zip(ids[:2], (30.0, 50.0), (-1.0, -3.0), strict=True):
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
        storage.set_trial_user_attr(trial_id, "seconds", 60.0)
        storage.set_trial_user_attr(trial_id, "copying_c_t", c_t)
        storage.set_trial_user_attr(trial_id, "copying_nn_ratio", 0.5)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, values=[value])
    storage.set_trial_state_values(ids[2], optuna.trial.TrialState.RUNNING)
    storage.set_trial_state_values(ids[3], optuna.trial.TrialState.RUNNING)
    storage.set_trial_user_attr(ids[3], "error", "exit code 1: out of memory")
    storage.set_trial_state_values(ids[3], optuna.trial.TrialState.FAIL)
    table = rows(spec, study)
    nsgan, lsgan = table
    assert (nsgan.fids, nsgan.running, nsgan.waiting) == ([30.0, 50.0], 1, 0)
    assert nsgan.mean == 40.0 and nsgan.median == 40.0 and nsgan.best == 30.0
    assert nsgan.std == pytest.approx(14.142, abs=1e-3)  # sample std of 30 and 50
    assert (lsgan.fids, lsgan.failed, lsgan.waiting) == ([], 1, 2)
    text = markdown(spec, study, table)
    assert nsgan.c_t == [-1.0, -3.0] and lsgan.c_t == []
    # C_T -2 ± sample std 1.4 of -1 and -3; the NN ratio 0.5 ± 0
    assert "| nsgan | digits | 2/3 | 30 | 40 ± 14 | 40 | -2 ± 1.4 | 0.5 ± 0 | 1 |" in text
    assert "| lsgan | digits | 0/3 | - | - | - | - | - |" in text
    assert "- digits/nsgan: 1 running" in text
    assert "- digits/lsgan: 1 failed, 2 waiting" in text
    assert "digits/lsgan:setting0:seed0 (trial 3): exit code 1: out of memory" in text
    states = job_states(study, spec.jobs())
    assert sorted(s.state for s in states.values()) == ["done", "done", "failed", "running", "waiting", "waiting"]


def test_a_changed_study_file_is_refused_not_mixed_in(tmp_path):
    path = write_study(tmp_path, GANS, [0])
    spec = load_study(path)
    storage = open_storage(default_storage(spec), spec.retries)
    open_study(spec, storage)
    open_study(load_study(path), storage)  # the same file loads
    write_study(tmp_path, GANS, [0, 1])
    with pytest.raises(GenlitError, match="other configs, seeds or settings"):
        open_study(load_study(path), storage)


def test_search_settings_are_run_with_every_seed(tmp_path):
    space = {
        "sampler": "random", "settings": 3, "seed": 1,
        "space": {
            "model.init_args.generator_optimizer.init_args.lr": {"low": 1e-5, "high": 1e-2, "log": True},
            "model.init_args.k": [1, 2],
        },
    }  # fmt: skip
    spec = load_study(write_study(tmp_path, GANS, [0, 1], search=space))
    jobs = spec.jobs()
    assert len(jobs) == 2 * 3 * 2
    settings = spec.settings()
    assert settings == load_study(tmp_path / "study.yaml").settings()  # drawn from its seed
    for setting in settings:
        assert 1e-5 <= setting["model.init_args.generator_optimizer.init_args.lr"] <= 1e-2
        assert setting["model.init_args.k"] in (1, 2)
    assert jobs[0].fit_arguments()[1] in ("--model.init_args.k=1", "--model.init_args.k=2")
    grid = {"sampler": "grid", "space": {"model.init_args.k": [1, 5], "model.init_args.ema_decay": [None, 0.999]}}
    grid_spec = load_study(write_study(tmp_path, GANS[:1], [0], search=grid))
    assert len(grid_spec.settings()) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": 3}, "seeds must be a list of integers"),
        ({"budget": {"steps": 10}}, "budget must be {generator_steps: N} or {epochs: N}"),
        ({"configs": ["configs/digits/nope.yaml"]}, "config configs/digits/nope.yaml does not exist"),
        ({"configs": []}, "configs is empty"),
        ({"evaluation": {"samples": 10}}, "evaluation: unknown 'samples'"),
        ({"seed": [0]}, "unknown key 'seed'"),
        ({"search": {"sampler": "grid", "space": {"model.init_args.k": {"low": 1, "high": 5}}}}, "a grid takes a list"),
        ({"search": {"sampler": "random", "space": {"model.init_args.k": [1, 5]}}}, "needs settings: N"),
        ({"configs": [{"config": GANS[0], "after": GANS[1]}]}, "is not one of the study's configs"),
    ],
)
def test_bad_study_files_are_refused_in_one_line(tmp_path, change, message):
    path = write_study(tmp_path, GANS, [0])
    study = yaml.safe_load(path.read_text())
    study.update(change)
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(GenlitError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")) as info:
        load_study(path)
    assert "\n" not in str(info.value)


def test_the_study_files_of_the_repository_load():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        spec = load_study(path)
        assert spec.jobs(), path
        assert len(spec.seeds) >= 3, path


def _postgres_bin() -> Path | None:
    for candidate in [shutil.which("initdb"), *sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))]:
        if candidate:
            return Path(candidate).resolve().parent
    return None


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server on a Unix socket in tmp_path; yields its SQLAlchemy URL."""
    pytest.importorskip("psycopg2", reason="psycopg2 (pip install psycopg2-binary) is not installed")
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    user = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and no postgres user to run the server as")
    # Under /tmp, not tmp_path: the server's user must reach its folder (pytest's is 0700), and
    # a Unix socket's path has a short length limit.
    folder = Path(tempfile.mkdtemp(prefix="genlit-pg-"))
    folder.chmod(0o755)
    if user:
        shutil.chown(folder, user)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run([str(binaries / cmd[0]), *cmd[1:]], check=True, user=user, capture_output=True)  # noqa: E731
    run("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "genlit")
    options = f"-k {folder} -p {port} -c listen_addresses=''"
    run("pg_ctl", "-D", str(folder / "data"), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        run("createdb", "-h", str(folder), "-p", str(port), "-U", "genlit", "studies")
        yield f"postgresql+psycopg2://genlit@/studies?host={folder}&port={port}"
    finally:
        run("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_postgresql_run_each_trial_once(tmp_path, postgres):
    path = write_study(tmp_path, GANS[:1], [0, 1], name="postgres_test")
    first, second = worker(path, "--storage", postgres), worker(path, "--storage", postgres)
    outputs = [finish(first), finish(second)]
    _, study = stored(path, postgres)
    check_each_once(study, 2)
    assert sum(int(out.split("this run ran ")[1].split()[0]) for out in outputs) == 2
    assert not (tmp_path / "out" / "study.db").exists()  # the server holds the study


def test_a_changed_budget_or_evaluation_is_refused_but_not_a_data_root(tmp_path):
    path = write_study(tmp_path, GANS, [0])
    spec = load_study(path)
    storage = open_storage(default_storage(spec), spec.retries)
    open_study(spec, storage)
    study = yaml.safe_load(path.read_text())
    for change in ({"budget": {"generator_steps": 6}}, {"evaluation": {"num_samples": 50}}):
        path.write_text(yaml.safe_dump({**study, **change}))
        with pytest.raises(GenlitError, match="other configs, seeds or settings"):
            open_study(load_study(path), storage)
    path.write_text(yaml.safe_dump({**study, "arguments": [*TINY, "--data.init_args.root=/elsewhere"]}))
    open_study(load_study(path), storage)  # where a machine keeps its data is not the study
