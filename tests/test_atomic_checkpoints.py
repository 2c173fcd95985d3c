"""Checkpoint writes are atomic wherever $TMPDIR is: a full disk or a SIGKILL loses nothing.

The previous ``last.ckpt`` stays loadable and no partial checkpoint remains, whether the write
fails (out of space) or the process is killed midway, with $TMPDIR on another filesystem than
the checkpoint folder (where Lightning's own writer copies across filesystems).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from genlit import checkpoint_io
from genlit.checkpoint_io import AtomicCheckpointIO
from genlit.errors import GenlitError

REPO = Path(__file__).resolve().parents[1]


def checkpoint(value: float, numel: int = 1000) -> dict:
    return {"state_dict": {"w": torch.full((numel,), value)}, "global_step": int(value)}


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_save_replaces_the_file_and_leaves_nothing_else(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), target)
    io.save_checkpoint(checkpoint(2.0), target)
    assert files(target.parent) == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert io.load_checkpoint(target, weights_only=True)["global_step"] == 2


def test_out_of_space_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), target)

    def full_disk(file, data):
        file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_io, "write_chunks", full_disk)
    with pytest.raises(GenlitError) as info:
        io.save_checkpoint(checkpoint(2.0, numel=100_000), target)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "No space left on device" in message and "free" in message
    assert files(tmp_path) == ["last.ckpt"]  # no partial or temp file
    assert torch.load(target, weights_only=True)["global_step"] == 1


def test_a_new_checkpoint_that_fails_leaves_no_file(tmp_path, monkeypatch):
    def full_disk(file, data):
        file.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_io, "write_chunks", full_disk)
    with pytest.raises(GenlitError):
        AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), tmp_path / "epoch=0-step=10.ckpt")
    assert files(tmp_path) == []


def test_lightning_writes_through_the_plugin(tmp_path, monkeypatch):
    # ModelCheckpoint and trainer.save_checkpoint reach strategy.checkpoint_io: the plugin
    # writes every file, Lightning's fsspec transaction (a temp file in $TMPDIR) none.
    written = []
    original = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append(Path(path).name)
        original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    monkeypatch.setattr(checkpoint_io.TorchCheckpointIO, "save_checkpoint", None)  # never used
    trainer = Trainer(default_root_dir=tmp_path, max_steps=2, logger=False, limit_val_batches=0,
                      enable_progress_bar=False, enable_model_summary=False,
                      plugins=[AtomicCheckpointIO()])
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    assert written == ["epoch=0-step=2.ckpt", "manual.ckpt"]
    assert not list(tmp_path.rglob(".*tmp-*"))


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import torch
    from genlit import checkpoint_io

    target = sys.argv[1]
    io = checkpoint_io.AtomicCheckpointIO()

    def slow(file, data):
        file.write(data[: len(data) // 2])
        file.flush()
        print("writing", flush=True)
        time.sleep(60)

    checkpoint_io.write_chunks = slow
    big = {"state_dict": {"w": torch.full((4_000_000,), 2.0)}, "global_step": 2}  # 16 MB
    io.save_checkpoint(big, target)
    """
)


def test_a_write_killed_midway_keeps_the_previous_checkpoint(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) to put the checkpoint folder on")
    tmpdir = Path(tempfile.gettempdir())
    if os.stat(shm).st_dev == os.stat(tmpdir).st_dev:
        pytest.skip(f"/dev/shm and TMPDIR ({tmpdir}) are on the same filesystem")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="genlit-atomic-"))
    try:
        target = folder / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), target)
        env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
        writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "writing"
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
        assert torch.load(target, weights_only=True)["global_step"] == 1  # the previous one
        assert [p for p in files(folder) if p.endswith(".ckpt")] == ["last.ckpt"]
        leftovers = [p for p in files(folder) if p != "last.ckpt"]
        assert all(p.startswith(".last.ckpt.tmp-") for p in leftovers), leftovers
        assert not list(tmp_path.iterdir())  # nothing went through $TMPDIR
        # The next save of that name clears what the killed process left.
        AtomicCheckpointIO().save_checkpoint(checkpoint(3.0), target)
        assert files(folder) == ["last.ckpt"]
        assert torch.load(target, weights_only=True)["global_step"] == 3
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
