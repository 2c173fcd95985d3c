"""``--ckpt_path last`` with every logger: W&B continues its run id, CSV a new version folder.

The interrupted runs are real ``python -m genlit fit`` processes stopped by SIGTERM, as a
scheduler stops them; W&B runs are read back from their offline transaction logs.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import wandb
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_wandb import (
    _parse,
    _spy_on_init,
    history_rows,
    no_credentials,  # noqa: F401 - the fixture
    read_records,
)

from datamodules.toy import GaussianRing
from genlit.callbacks import ResumeOnInterrupt
from genlit.cli import main
from genlit.loggers import WandbLogger
from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

REPO = Path(__file__).resolve().parents[1]
RING = "configs/toy/ring_nsgan.yaml"  # no ModelCheckpoint of its own: no save_last
LOG_EVERY = 5


def genlit_fit(save_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "genlit", "fit", "--config", RING, *extra,
            f"--trainer.logger.init_args.save_dir={save_dir}", "--trainer.enable_progress_bar=false",
            "--trainer.check_val_every_n_epoch=1000", f"--trainer.log_every_n_steps={LOG_EVERY}"]


def offline_env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def stop_when(command: list[str], started, env: dict[str, str] | None = None) -> tuple[int, Path]:
    """Runs ``command`` until ``started()`` holds, sends SIGTERM: the saved step and checkpoint."""
    with tempfile.TemporaryFile("w+") as err:  # a pipe nobody reads could fill up and block
        run = subprocess.Popen([*command, "--generator_steps=100000"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 180
            while not started() and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.2)
            assert run.poll() is None, "the run ended before it was stopped"
            assert started(), "the run logged nothing in 180 s"
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
        err.seek(0)
        text = err.read()
    assert run.returncode == 143, text[-2000:]
    match = re.search(r"interrupted at global step (\d+); saved (\S+);", text)
    assert match, text[-2000:]
    return int(match.group(1)), Path(match.group(2))


def resume(command: list[str], budget: int, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([*command, f"--generator_steps={budget}", "--ckpt_path=last"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def logged_steps(rows: list[dict]) -> list[int]:
    return [int(row["trainer/global_step"]) for row in rows if "train/d_loss" in row]


@pytest.mark.slow  # two real processes, a minute on 2 busy cores
def test_a_wandb_run_stopped_and_resumed_is_one_run_id_with_each_step_once(tmp_path):
    env = offline_env()
    command = genlit_fit(tmp_path, "--config", "configs/logger/wandb.yaml")

    def some_steps_logged() -> bool:
        logs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
        data = logs[0].read_bytes() if logs else b""
        return len(data) > 7 and len(history_rows(_parse(data))) >= 3  # past the file header

    stopped, saved = stop_when(command, some_steps_logged, env)
    (first,) = (tmp_path / "wandb").glob("offline-run-*")
    run_id = first.name.rsplit("-", 1)[1]
    assert saved == tmp_path / "genlit" / run_id / "checkpoints" / "last.ckpt"
    first_config = (saved.parents[1] / "config.yaml").read_bytes()

    budget = stopped // 2 + 3 * LOG_EVERY
    out = resume(command, budget, env)
    assert f"resuming from {saved}" in out

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and runs[0] == first
    assert {run.name.rsplit("-", 1)[1] for run in runs} == {run_id}  # one run, in two pieces
    assert [p.name for p in (tmp_path / "genlit").iterdir()] == [run_id]
    records = [read_records(next(run.glob("run-*.wandb"))) for run in runs]
    for piece in records:
        (start,) = [r.run for r in piece if r.WhichOneof("record_type") == "run"]
        assert start.run_id == run_id
    before, after = (logged_steps(history_rows(piece)) for piece in records)
    assert before and after
    steps = before + after
    assert len(steps) == len(set(steps)), "a step was logged twice"
    # Every logging step of an uninterrupted run, in order, nothing missing across the stop.
    stride = steps[1] - steps[0]
    assert stride > 0
    assert steps == list(range(steps[0], steps[-1] + 1, stride))
    assert steps[-1] + stride > budget  # up to the end of the budget
    # The first run's config is kept; the resumed run's is written next to it.
    folder = saved.parents[1]
    assert (folder / "config.yaml").read_bytes() == first_config
    assert (folder / "config-resume-1.yaml").is_file()
    final = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 2 * budget


@pytest.mark.slow  # two real processes, a minute on 2 busy cores
def test_a_csv_run_resumes_into_a_new_version_and_leaves_the_first_untouched(tmp_path):
    command = genlit_fit(tmp_path)
    first = tmp_path / "toy" / "ring_nsgan" / "version_0"

    def some_steps_logged() -> bool:
        metrics = first / "metrics.csv"
        return metrics.is_file() and len(metrics.read_text().splitlines()) > 3

    stopped, saved = stop_when(command, some_steps_logged)
    assert saved == first / "checkpoints" / "last.ckpt"
    files = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert len(files) >= 4  # metrics, hparams, config, checkpoint

    budget = stopped // 2 + 3 * LOG_EVERY
    out = resume(command, budget)
    assert f"resuming from {saved}" in out
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == files
    second = first.parent / "version_1"
    final = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 2 * budget


def test_a_finished_run_leaves_last_ckpt_that_ckpt_path_last_finds(tmp_path, capsys):
    args = ["fit", "--config", str(REPO / RING), f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=1000"]
    main([*args, "--generator_steps=30"])  # ends inside the first epoch
    (last,) = tmp_path.rglob("last.ckpt")
    assert last == tmp_path / "toy" / "ring_nsgan" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 60
    capsys.readouterr()
    main([*args, "--generator_steps=40", "--ckpt_path=last"])
    out = capsys.readouterr().out
    assert f"resuming from {last}" in out
    resumed = tmp_path / "toy" / "ring_nsgan" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=False)["global_step"] == 80


# The end-of-fit checkpoint of ResumeOnInterrupt, in process.


def tiny_fit(root: Path, steps: int, ckpt_path=None, **trainer_kwargs):
    """``(model, trainer, saver)`` of a GAN fit on the ring, 20 optimizer steps an epoch."""
    L.seed_everything(0)
    model = GAN(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8))
    saver = ResumeOnInterrupt()
    callbacks = [*trainer_kwargs.pop("callbacks", []), saver]
    options = dict(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer = L.Trainer(**{**options, **trainer_kwargs}, callbacks=callbacks)
    trainer.fit(model, GaussianRing(batch_size=32, samples_per_epoch=320), ckpt_path=ckpt_path)
    return model, trainer, saver


@pytest.mark.parametrize("n", [14, 20], ids=["mid_epoch", "epoch_end"])  # 20 steps an epoch
def test_the_last_ckpt_of_a_finished_fit_resumes_bitwise(tmp_path, n):
    # Saved after Lightning closed the epoch (on_train_end), it would resume one epoch on.
    kwargs = dict(enable_checkpointing=False, limit_val_batches=0)
    whole, *_ = tiny_fit(tmp_path, 2 * n, **kwargs)
    *_, saver = tiny_fit(tmp_path, n, logger=CSVLogger(tmp_path), **kwargs)
    assert saver.saved == tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed, trainer, _ = tiny_fit(tmp_path, 2 * n, ckpt_path=saver.saved, **kwargs)
    assert trainer.global_step == 2 * n
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(("steps", "writes"), [(8, False), (10, True)], ids=["saved", "stale"])
def test_last_ckpt_is_written_unless_the_newest_checkpoint_already_is_it(tmp_path, steps, writes):
    every_4 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_last=True)
    _, trainer, saver = tiny_fit(tmp_path, steps, callbacks=[every_4])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert saver.saved == (last if writes else None)
    assert torch.load(last, weights_only=False)["global_step"] == steps == trainer.global_step


def test_last_ckpt_follows_a_checkpoint_callback_tied_to_validation(tmp_path):
    on_validation = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    _, trainer, _ = tiny_fit(tmp_path, 30, callbacks=[on_validation], limit_val_batches=1,
                             check_val_every_n_epoch=10)  # no validation in 30 steps
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 30


def test_nothing_is_written_without_logger_and_checkpoint_callback(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        *_, saver = tiny_fit(tmp_path, 4, enable_checkpointing=False, default_root_dir=None)
    assert saver.saved is None
    assert list(tmp_path.iterdir()) == []
    assert "no checkpoint folder" in caplog.text


def test_fast_dev_run_writes_no_last_ckpt(tmp_path):
    *_, saver = tiny_fit(tmp_path, 4, fast_dev_run=2)
    assert saver.saved is None
    assert not list(tmp_path.rglob("*.ckpt"))


# Which checkpoints continue a W&B run.


def w_and_b_logger(save_dir: Path, **kwargs) -> WandbLogger:
    return WandbLogger(save_dir=save_dir, project="genlit", offline=True, **kwargs)


def checkpoint_in(folder: Path) -> Path:
    path = folder / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    return path


def test_a_checkpoint_of_a_wandb_run_continues_that_run(tmp_path):
    (tmp_path / "wandb" / "offline-run-20250101_000000-ab12cd34").mkdir(parents=True)
    logger = w_and_b_logger(tmp_path)
    assert logger.continue_from(checkpoint_in(tmp_path / "genlit" / "ab12cd34"))
    assert logger.version == "ab12cd34" and logger.resumed
    assert logger.log_dir == str(tmp_path / "genlit" / "ab12cd34")
    init = logger._wandb_init  # what wandb.init receives
    assert (init["id"], init["resume"]) == ("ab12cd34", "allow")


@pytest.mark.parametrize("where", ["csv_version", "other_project", "no_wandb_run", "dirpath"])
def test_other_checkpoints_start_a_new_wandb_run(tmp_path, where):
    (tmp_path / "wandb" / "offline-run-20250101_000000-ab12cd34").mkdir(parents=True)
    folder = {
        "csv_version": tmp_path / "genlit" / "version_0",  # a CSV logger's, same save_dir
        "other_project": tmp_path / "other" / "ab12cd34",
        "no_wandb_run": tmp_path / "genlit" / "zz99yy88",
        "dirpath": tmp_path / "ckpt" / "ab12cd34" / "elsewhere",
    }[where]
    logger = w_and_b_logger(tmp_path)
    assert not logger.continue_from(checkpoint_in(folder))
    assert logger.version is None and not logger.resumed
    assert logger._wandb_init["id"] is None


def test_a_given_other_version_is_kept(tmp_path):
    (tmp_path / "wandb" / "offline-run-20250101_000000-ab12cd34").mkdir(parents=True)
    logger = w_and_b_logger(tmp_path, version="mine")
    assert not logger.continue_from(checkpoint_in(tmp_path / "genlit" / "ab12cd34"))
    assert logger.version == "mine" and not logger.resumed


@pytest.mark.usefixtures("no_credentials")
def test_a_resumed_run_that_cannot_start_online_goes_offline_as_a_new_run(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # looks valid; the server is unreachable
    calls = _spy_on_init(monkeypatch, fail_online=True)
    (tmp_path / "wandb" / "run-20250101_000000-ab12cd34").mkdir(parents=True)
    logger = WandbLogger(save_dir=tmp_path, project="genlit", init_timeout=3)
    assert logger.continue_from(checkpoint_in(tmp_path / "genlit" / "ab12cd34"))
    try:
        run = logger.experiment
    finally:
        wandb.finish()
    assert [(c["id"], c.get("mode"), c["resume"]) for c in calls] == [
        ("ab12cd34", None, "allow"),
        (None, "offline", "allow"),  # wandb keeps a failed id to itself in this process
    ]
    assert logger.version == run.id != "ab12cd34" and not logger.resumed
    assert logger.log_dir == str(tmp_path / "genlit" / run.id)
    assert "logging offline as a new run, not run ab12cd34" in capsys.readouterr().err
