"""genlit._compat's reaches into Lightning's WandbLogger: each fails here if Lightning moves it."""

from __future__ import annotations

import pytest
import wandb
from lightning.pytorch.loggers import WandbLogger

from genlit._compat import wandb_init_arguments


class _Started(Exception):
    """Raised by the stand-in for wandb.init: the arguments are all the test needs."""


def test_wandb_init_arguments_are_the_loggers_own(tmp_path):
    logger = WandbLogger(name="n", save_dir=tmp_path, version="abc123", project="p", tags=["t"])
    init = wandb_init_arguments(logger)
    assert isinstance(init, dict)
    assert init["name"] == "n"
    assert init["project"] == "p"
    assert init["dir"] == str(tmp_path)
    assert init["id"] == "abc123"
    assert init["resume"] == "allow"
    assert init["tags"] == ["t"]
    assert wandb_init_arguments(logger) is init  # the live dictionary, not a copy


def test_a_change_to_wandb_init_arguments_reaches_wandb_init(tmp_path, monkeypatch):
    received = []

    def init(**kwargs):
        received.append(kwargs)
        raise _Started

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)  # no run of another test to reuse
    logger = WandbLogger(save_dir=tmp_path, project="p")
    wandb_init_arguments(logger).update(mode="offline", id=None)
    with pytest.raises(_Started):
        logger.experiment  # noqa: B018 - starting the run is the point
    (kwargs,) = received
    assert kwargs["mode"] == "offline"
    assert kwargs["id"] is None
    assert kwargs["project"] == "p"
