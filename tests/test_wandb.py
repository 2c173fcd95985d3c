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
import PIL.Image
import pytest
import wandb
import yaml
from wandb.proto import wandb_internal_pb2

from datamodules.toy import GaussianRing
from genlit.callbacks.images import run_dir
from genlit.cli import GenlitCLI
from genlit.loggers import SaveConfigToRun, WandbLogger
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


@pytest.fixture(autouse=True)
def _finish_runs():
    # Lightning leaves the run open (a later trainer.test may log to it): finish it here so the
    # file is complete and the next test does not reuse it.
    yield
    wandb.finish()


def toy_fit(logger: WandbLogger, tmp_path: Path, checkpointing: bool = False) -> L.Trainer:
    L.seed_everything(0)
    model = GAN(MLPGenerator(latent_dim=2, hidden_dim=16), MLPDiscriminator(hidden_dim=16))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=8,
        log_every_n_steps=1,
        limit_val_batches=0,
        enable_checkpointing=checkpointing,
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


def cli_fit(config: str, tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(config)
    # What `genlit fit --config experiment.yaml` runs, with the config callback genlit's CLI uses.
    GenlitCLI(save_config_callback=SaveConfigToRun, args=["fit", "--config", str(path)])
    wandb.finish()


def test_offline_run_of_a_cli_fit_holds_metrics_grids_config_and_checkpoints(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")  # whatever the developer's shell says
    cli_fit(CONFIG.format(save_dir=tmp_path), tmp_path)
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
    assert logged["trainer"]["max_epochs"] == 2
    assert logged["trainer"]["callbacks"][0]["class_path"].endswith("SampleGrid")
    assert logged["data"]["class_path"].endswith("Digits")
    assert logged["model"]["init_args"]["generator"]["init_args"]["latent_dim"] == 8

    # Lightning's folders: <save_dir>/<project>/<run id>, checkpoints in its checkpoints/.
    (run_folder,) = (tmp_path / "genlit-test").iterdir()
    assert run_folder.name == run.name.rsplit("-", 1)[1]  # the W&B run id
    assert (run / "files" / "config.yaml").read_text() == (run_folder / "config.yaml").read_text()
    assert not (tmp_path / "config.yaml").exists()  # trainer.log_dir of a W&B logger: shared
    assert sorted((run_folder / "samples").glob("grid_step_*.png"))
    summary = updates(records, "summary")
    last = Path(summary["checkpoints/last_path"])
    assert last.is_file() and last.suffix == ".ckpt"
    assert last.parent == run_folder / "checkpoints"
    assert summary["checkpoints/best_path"] == str(last)  # nothing monitored: the newest
    assert sorted(p.name for p in run_folder.iterdir()) == ["checkpoints", "config.yaml", "samples"]
    assert f"wandb sync {run}" in capsys.readouterr().err


TOY_CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 2
  limit_val_batches: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger: {{class_path: {logger}, init_args: {{save_dir: {save_dir}}}}}
model:
  class_path: GAN
  init_args:
    generator:
      class_path: genlit.networks.mlp.MLPGenerator
      init_args: {{hidden_dim: {width}}}
    discriminator:
      class_path: genlit.networks.mlp.MLPDiscriminator
      init_args: {{hidden_dim: 8}}
data:
  class_path: GaussianRing
  init_args: {{batch_size: 16, samples_per_epoch: 64}}
"""


WANDB = "genlit.loggers.WandbLogger"


def test_two_cli_runs_in_one_save_dir_keep_their_own_config(tmp_path, monkeypatch):
    # Lightning's SaveConfigCallback writes to trainer.log_dir, the save_dir of a W&B logger:
    # the second run would stop on the first one's config.yaml (Lightning issue #17168).
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)  # the project: Lightning's lightning_logs
    for width in (8, 16):
        cli_fit(TOY_CONFIG.format(logger=WANDB, save_dir=tmp_path, width=width), tmp_path)
    configs = sorted((tmp_path / "lightning_logs").glob("*/config.yaml"))
    assert len(configs) == 2
    widths = {
        yaml.safe_load(c.read_text())["model"]["init_args"]["generator"]["init_args"]["hidden_dim"]
        for c in configs
    }
    assert widths == {8, 16}
    for config in configs:
        (run,) = (tmp_path / "wandb").glob(f"offline-run-*-{config.parent.name}")
        assert (run / "files" / "config.yaml").read_text() == config.read_text()


def test_a_disabled_run_keeps_its_config_in_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cli_fit(TOY_CONFIG.format(logger=WANDB, save_dir=tmp_path, width=8), tmp_path)
    (config,) = (tmp_path / "lightning_logs").glob("*/config.yaml")
    assert yaml.safe_load(config.read_text())["trainer"]["max_steps"] == 2
    assert not (tmp_path / "wandb").exists()


def test_without_wandb_the_config_goes_to_trainer_log_dir(tmp_path):
    cli_fit(TOY_CONFIG.format(logger="CSVLogger", save_dir=tmp_path, width=8), tmp_path)
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"  # Lightning's place
    assert yaml.safe_load(config.read_text())["trainer"]["logger"]["class_path"].endswith(
        "CSVLogger"
    )


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
    # wandb keeps its settings (a key included) per process: a key another test of this worker
    # gave must not count here.
    wandb.teardown()
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
    logger = WandbLogger(
        project="genlit-test", save_dir=tmp_path, version="abc123", init_timeout=3, log_model=True
    )
    assert not logger.offline
    toy_fit(logger, tmp_path, checkpointing=True)
    assert [call.get("mode") for call in calls] == [None, "offline"]
    assert calls[0]["settings"]["init_timeout"] == 3
    # wandb keeps a failed run's id for itself: the offline run gets another.
    assert calls[0]["id"] == "abc123" and calls[1]["id"] is None
    assert logger.offline
    assert "could not start an online run (CommError: no route to host)" in capsys.readouterr().err
    wandb.finish()
    records = read_records(next(offline_run(tmp_path).glob("run-*.wandb")))
    assert any("train/d_loss" in row for row in history_rows(records))
    # The checkpoint asked for waits in the offline run as an artifact, for `wandb sync`.
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model"


def _w_and_b_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "W&B could not" in str(w.message)]


def test_tracker_errors_become_one_warning_and_training_finishes(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="genlit-test", save_dir=tmp_path)
    picture = tmp_path / "grid.png"
    PIL.Image.new("RGB", (4, 4)).save(picture)

    def broken(*args, **kwargs):
        raise ConnectionError("tracker down")

    monkeypatch.setattr(logger.experiment, "log", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = toy_fit(logger, tmp_path)
        logger.log_image("samples/grid", images=[str(picture)])  # log_image ends in log_metrics
    assert trainer.global_step == 8
    (message,) = _w_and_b_warnings(caught)  # 9 failed calls, one warning
    assert "ConnectionError: tracker down" in message
    assert "training goes on" in message


def test_a_finished_run_is_a_warning_not_a_crash(monkeypatch, tmp_path):
    # The run ends under the logger (wandb.finish() in a notebook cell, a dead service): wandb
    # raises on every later call, in the training process.
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="genlit-test", save_dir=tmp_path)
    toy_fit(logger, tmp_path, checkpointing=True)
    wandb.finish()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log_metrics({"val/fid": 1.0}, step=8)
        logger.log_metrics({"val/fid": 2.0}, step=9)
        logger.finalize("success")  # records the checkpoint paths in the finished run
    logged, summary = _w_and_b_warnings(caught)  # two failed logs, one warning; one for finalize
    assert "UsageError" in logged and "is finished. The call to `log`" in logged
    assert "UsageError" in summary and "is finished" in summary and "`log`" not in summary


def test_checkpoints_and_pictures_of_each_run_stay_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    folders = []
    for _ in range(2):
        logger = WandbLogger(project="p", save_dir=tmp_path)
        trainer = toy_fit(logger, tmp_path, checkpointing=True)
        folder = tmp_path / "p" / logger.version
        assert logger.save_dir == str(tmp_path)  # Lightning's: W&B writes <save_dir>/wandb
        assert Path(logger.log_dir) == folder
        assert Path(trainer.checkpoint_callback.dirpath) == folder / "checkpoints"
        assert run_dir(trainer) == folder  # genlit's pictures, config.yaml, interrupt checkpoint
        (checkpoint,) = (folder / "checkpoints").iterdir()
        assert checkpoint.suffix == ".ckpt"
        folders.append(folder)
        wandb.finish()
    assert folders[0] != folders[1]
    assert sorted((tmp_path / "p").iterdir()) == sorted(folders)


def test_a_given_version_is_the_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="p", save_dir=tmp_path, version="abc123")
    assert logger.log_dir == str(tmp_path / "p" / "abc123")  # known before the run starts
    assert logger.experiment.id == "abc123"
    assert offline_run(tmp_path).name.endswith("-abc123")


def test_offline_with_log_model_is_refused():
    with pytest.raises(ValueError, match=r"^log_model=True needs an online run") as raised:
        WandbLogger(offline=True, log_model=True)
    assert "\n" not in str(raised.value)


def test_log_model_without_credentials_records_paths_only(no_credentials, tmp_path, capsys):
    logger = WandbLogger(project="p", save_dir=tmp_path, log_model=True)
    assert logger.offline
    toy_fit(logger, tmp_path, checkpointing=True)
    assert "checkpoints are not uploaded (their paths are recorded)" in capsys.readouterr().err
    wandb.finish()
    records = read_records(next(offline_run(tmp_path).glob("run-*.wandb")))
    assert not [r for r in records if r.WhichOneof("record_type") == "artifact"]
    assert Path(updates(records, "summary")["checkpoints/best_path"]).is_file()
