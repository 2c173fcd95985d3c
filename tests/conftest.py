"""Shared fixtures: small networks, the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a tracker's servers.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets of ../shared/data; skips the test where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
