"""Shared fixtures: small networks, the location of ../shared/data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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




# What importing does, measured in a new interpreter. Lightning goes first: it sets
# PYTORCH_NVML_BASED_CUDA_CHECK when first imported, and its torchmetrics loads
# torchmetrics.image; what is measured after it is what genlit's own modules do.
FRESH_IMPORT = """\
import json, os, sys, warnings
import lightning.pytorch
env, filters = dict(os.environ), list(warnings.filters)
before = set(sys.modules)
import genlit.models
added, after_models = sorted(set(sys.modules) - before), sorted(sys.modules)
import genlit.metrics as metrics
first = 'genlit.metrics.fid' in sys.modules or 'genlit.metrics.features' in sys.modules
metrics.FeatureDistances
then = 'genlit.metrics.fid' in sys.modules
import genlit, genlit.models, genlit.callbacks, genlit.cli, genlit.loggers, genlit.metrics
import genlit.metrics.fid, datamodules.images, datamodules.toy
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
print(json.dumps({
    "models_added": added, "after_models": after_models, "first": first, "then": then,
    "env": changed, "filters": len(warnings.filters) - len(filters),
    "same": warnings.filters[-len(filters):] == filters if filters else True,
}))
"""


@pytest.fixture(scope="session")
def fresh_import() -> dict:
    """One new interpreter's record of :data:`FRESH_IMPORT`, in the order it imports:

    - ``models_added``, ``after_models``: the modules ``import genlit.models`` added after
      Lightning, and every module loaded then;
    - ``first``, ``then``: whether the FID stack was loaded before and after asking
      ``genlit.metrics`` for ``FeatureDistances``;
    - ``env``, ``filters``, ``same``: the environment variables changed, the warning filters
      added, and whether the earlier filters survived, once every genlit module is imported.

    Its readers are marked ``xdist_group("fresh_import")``: one worker, one interpreter.
    """
    done = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORT], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
