"""genlit.loggers.WandbLogger: what an offline run holds, going offline alone, failures as warnings.

The runs are read back from W&B's own transaction log (``run-<id>.wandb``): a LevelDB-style
log of ``wandb_internal_pb2.Record`` protobufs, the file ``wandb sync`` uploads.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from datamodules.toy import GaussianRing
from genlit.cli import main
from genlit.loggers import WandbLogger
from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

# The framing of W&B's transaction log (LevelDB's log format with its own file header).
_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32c, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _parse(data: bytes) -> list[wandb_internal_pb2.Record]:
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1)
    records, chunks, pos = [], [], _FILE_HEADER.size
    while pos + _RECORD_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER.size:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        start = pos + _RECORD_HEADER.size
        if start + length > len(data):  # the writer is still busy with this one
            break
        body = data[start : start + length]
        chunks = [body] if kind in (_FULL, _FIRST) else [*chunks, body]
        pos = start + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
    return records


def read_records(path: Path, timeout: float = 20.0) -> list[wandb_internal_pb2.Record]:
    """Every record of a finished ``run-<id>.wandb`` file, in order.

    ``wandb.finish()`` can return before W&B's service process has written the last records,
    so this waits for the ``exit`` record that closes the file.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _parse(path.read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.05)


def _merge(into: dict, items) -> dict:
    # An item is either one top-level `key` or a path `nested_key` (a media value's fields).
    for item in items:
        *parents, last = [item.key] if item.key else list(item.nested_key)
        target = into
        for name in parents:
            target = target.setdefault(name, {})
        target[last] = json.loads(item.value_json)
    return into


def history_rows(records) -> list[dict]:
    return [_merge({}, r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def updates(records, kind: str) -> dict:
    """The last value of every key of the ``config`` or ``summary`` records."""
    values: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == kind:
            _merge(values, getattr(r, kind).update)
    return values


def offline_run(save_dir: Path) -> Path:
    (run,) = (save_dir / "wandb").glob("offline-run-*")
    return run


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Networks this small run fastest on one thread; with more, a busy 2-core machine spends
    # most of each step waiting for OpenMP workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _finish_runs():
    # Lightning leaves the run open (a later trainer.test may log to it): finish it here so the
    # file is complete and the next test does not reuse it.
    yield
    wandb.finish()


def toy_fit(logger: WandbLogger, tmp_path: Path) -> L.Trainer:
    L.seed_everything(0)
    model = GAN(MLPGenerator(latent_dim=2, hidden_dim=16), MLPDiscriminator(hidden_dim=16))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=8,
        log_every_n_steps=1,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        logger=logger,
    )
    trainer.fit(model, GaussianRing(batch_size=64, samples_per_epoch=640))
    return trainer


CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 2
  limit_train_batches: 3
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: genlit.loggers.WandbLogger
    init_args: {{project: genlit-test, save_dir: {save_dir}}}
  callbacks:
    - class_path: SampleGrid
      init_args: {{num_samples: 16, nrow: 4}}
model:
  class_path: GAN
  init_args:
    generator:
      class_path: genlit.networks.dcgan.DCGANGenerator
      init_args: {{latent_dim: 8, channels: 1, image_size: 8, width: 8}}
    discriminator:
      class_path: genlit.networks.dcgan.DCGANDiscriminator
      init_args: {{channels: 1, image_size: 8, width: 8}}
data:
  class_path: Digits
  init_args: {{image_size: 8, batch_size: 32}}
"""


def test_offline_run_of_a_cli_fit_holds_metrics_grids_config_and_checkpoints(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")  # whatever the developer's shell says
    config = tmp_path / "experiment.yaml"
    config.write_text(CONFIG.format(save_dir=tmp_path))
    main(["fit", "--config", str(config)])
    wandb.finish()
    run = offline_run(tmp_path)
    (log,) = run.glob("run-*.wandb")
    records = read_records(log)

    rows = history_rows(records)
    keys = set().union(*rows)
    assert {"train/d_loss", "train/g_loss", "trainer/global_step", "samples/grid"} <= keys
    assert len([row for row in rows if "train/d_loss" in row]) == 6  # 2 epochs x 3 batches

    grids = [row["samples/grid"] for row in rows if "samples/grid" in row]
    assert len(grids) == 2  # one per epoch
    for grid in grids:
        assert grid["_type"] == "images/separated"
        for name in grid["filenames"]:
            assert (run / "files" / name).is_file()

    # The whole CLI config, not only the model's hyperparameters.
    logged = updates(records, "config")
    assert logged["seed_everything"] == 0
    assert logged["trainer"]["callbacks"][0]["class_path"].endswith("SampleGrid")
    assert logged["data"]["class_path"].endswith("Digits")
    assert logged["model"]["init_args"]["generator"]["init_args"]["latent_dim"] == 8
    assert (run / "files" / "config.yaml").is_file()

    summary = updates(records, "summary")
    assert Path(summary["checkpoints/last_path"]).is_file()
    assert summary["checkpoints/last_path"].endswith(".ckpt")

    # Lightning's run folder is per run: config.yaml and the grids of this run only.
    (run_folder,) = (tmp_path / "genlit-test").iterdir()
    assert run_folder.name == run.name.rsplit("-", 1)[1]  # the W&B run id
    assert (run_folder / "config.yaml").is_file()
    assert (run_folder / "samples" / "grid_epoch_0001.png").is_file()
    assert f"wandb sync {run}" in capsys.readouterr().err


def _no_network(monkeypatch):
    """Makes any connection beyond this machine fail (W&B's service talks over loopback)."""
    connect = socket.socket.connect

    def local_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise AssertionError(f"network access to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


def _spy_on_init(monkeypatch, fail_online: bool = False) -> list[dict]:
    calls = []
    real_init = wandb.init

    def init(**kwargs):
        calls.append(kwargs)
        if fail_online and kwargs.get("mode") is None:
            raise wandb.errors.CommError("no route to host")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    return calls


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))  # absent
    _no_network(monkeypatch)


def test_goes_offline_by_itself_without_credentials(no_credentials, monkeypatch, tmp_path, capsys):
    calls = _spy_on_init(monkeypatch)
    logger = WandbLogger(project="genlit-test", save_dir=tmp_path)
    assert logger.offline  # decided before any run starts
    trainer = toy_fit(logger, tmp_path)
    assert trainer.global_step == 8
    assert [call.get("mode") for call in calls] == ["offline"]  # never tried online
    err = capsys.readouterr().err
    assert "no W&B credentials found" in err
    run = offline_run(tmp_path)
    assert logger.run_dir == str(run)
    assert f"wandb sync {run}" in err


def test_online_start_failure_falls_back_to_offline(no_credentials, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # looks valid; the server is unreachable
    calls = _spy_on_init(monkeypatch, fail_online=True)
    logger = WandbLogger(project="genlit-test", save_dir=tmp_path, init_timeout=3)
    assert not logger.offline
    toy_fit(logger, tmp_path)
    assert [call.get("mode") for call in calls] == [None, "offline"]
    assert calls[0]["settings"]["init_timeout"] == 3
    assert logger.offline
    assert "could not start an online run" in capsys.readouterr().err
    wandb.finish()
    history = history_rows(read_records(next(offline_run(tmp_path).glob("run-*.wandb"))))
    assert any("train/d_loss" in row for row in history)


def test_tracker_errors_become_one_warning_and_training_finishes(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="genlit-test", save_dir=tmp_path)

    def broken(*args, **kwargs):
        raise ConnectionError("tracker down")

    monkeypatch.setattr(logger.experiment, "log", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = toy_fit(logger, tmp_path)
        logger.log_image("samples/grid", images=[str(tmp_path / "missing.png")])
    assert trainer.global_step == 8
    messages = [str(w.message) for w in caught if "W&B could not" in str(w.message)]
    assert sum("log metrics" in m for m in messages) == 1  # 8 failed steps, one warning
    assert sum("log images" in m for m in messages) == 1
    assert all("training goes on" in m for m in messages)


def test_every_run_gets_its_own_folder(tmp_path):
    first = WandbLogger(project="p", save_dir=tmp_path)
    second = WandbLogger(project="p", save_dir=tmp_path)
    assert first.save_dir != second.save_dir
    assert Path(first.save_dir) == tmp_path / "p" / first.version
    resumed = WandbLogger(project="p", save_dir=tmp_path, version="abc123")
    assert resumed.save_dir == str(tmp_path / "p" / "abc123")


def test_offline_with_log_model_is_refused():
    with pytest.raises(ValueError, match="log_model"):
        WandbLogger(offline=True, log_model=True)
