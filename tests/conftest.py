"""Shared fixtures: small networks, the location of ../shared/data."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from lightning.pytorch import Trainer  # noqa: F401 - sets the NVML check the probe below revisits

from genlit._compat import skip_failing_nvml_probe

# Tiny test networks run fastest on one thread, and subprocesses started by tests then do not
# compete with the test process for the cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# What the genlit command does at start: without an NVIDIA driver, no NVML retry per Adam step.
skip_failing_nvml_probe()

# Tests never reach a tracker's servers.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def genlit_cache(tmp_path_factory, monkeypatch) -> None:
    """FID reference statistics go to this session's temporary folder, never ~/.cache/genlit."""
    monkeypatch.setenv("GENLIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "genlit_cache"))


@pytest.fixture
def shared_data() -> Path:
    """The real datasets of ../shared/data; skips the test where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch):
    """Every test runs offline: any attempt to connect fails as it would without a network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def skip_md5(monkeypatch):
    """Tiny stand-in files cannot match torchvision's md5s of the real ones; check existence."""

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.celeba, "check_integrity", exists)


