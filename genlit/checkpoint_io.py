"""Checkpoints written atomically next to their target, wherever ``$TMPDIR`` is.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the bytes go to a temp
file from ``tempfile.mkstemp()`` (in ``$TMPDIR``) and ``shutil.move`` puts it in place. With
``$TMPDIR`` on another filesystem that move is a copy onto the target, so a SIGKILL during it
leaves ``last.ckpt`` truncated and the previous checkpoint gone, and a full disk leaves a
truncated file that looks like a checkpoint. :class:`AtomicCheckpointIO` writes a hidden temp
file in the target's own folder, flushes and fsyncs it, renames it over the target
(``os.replace``, atomic on one filesystem) and fsyncs the folder: a reader sees the old file
or the new one, never a part.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from genlit.errors import GenlitError

CHUNK = 16 * 2**20
"""Bytes written per call, so a full disk fails part-way as it does for a real file."""


def write_chunks(file: IO[bytes], data: memoryview) -> None:
    """Writes ``data`` to ``file``, ``CHUNK`` bytes at a time."""
    for start in range(0, len(data), CHUNK):
        file.write(data[start : start + CHUNK])


def temp_prefix(path: Path) -> str:
    """``.last.ckpt.tmp-``: hidden, and no ``*.ckpt`` glob (``--ckpt_path last``) matches it."""
    return f".{path.name}.tmp-"


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the rename itself was atomic
    finally:
        os.close(fd)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def write_error(path: Path, err: OSError, size: int) -> GenlitError:
    """One line: what failed, in which folder, how much space is free, and that nothing was lost."""
    folder = path.parent
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    reason = err.strerror or str(err) or type(err).__name__
    kept = "the previous checkpoint is intact" if path.exists() else "no partial file is left"
    advice = "free some space or" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix it or"
    return GenlitError(
        f"cannot write checkpoint {path.name} ({_size(size)}) in {folder}: {reason} ({free}); "
        f"{kept}: {advice} point the run at another folder "
        "(trainer.logger.init_args.save_dir) and resume with --ckpt_path last"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: the old file or the new, never a part.

    Remote paths (``s3://``, ...) go to Lightning's own writer. On a write error no partial
    file is left and :class:`genlit.errors.GenlitError` says in one line which folder failed
    and how much space it has. A process killed mid-write leaves only a hidden
    ``.NAME.tmp-*`` file next to the target, removed by the next save of that name.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        folder = path.parent
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised before the disk is touched
        data = buffer.getbuffer()
        temp: Path | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(temp_prefix(path) + "*"):  # left by a killed process
                stale.unlink(missing_ok=True)
            fd, name = tempfile.mkstemp(prefix=temp_prefix(path), dir=folder)
            temp = Path(name)
            with os.fdopen(fd, "wb") as file:
                write_chunks(file, data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0o600 is not what torch.save gives
            os.replace(temp, path)
            temp = None
        except OSError as err:
            raise write_error(path, err, len(data)) from None
        finally:
            if temp is not None:
                temp.unlink(missing_ok=True)
        _fsync_folder(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
