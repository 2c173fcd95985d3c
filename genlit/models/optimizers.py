"""Optimizers from the config's factories, with a bad setting turned into one line."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable

from genlit.errors import GenlitError


def build_optimizer(factory: OptimizerCallable, parameters: Any, key: str) -> torch.optim.Optimizer:
    """Calls an optimizer factory from the config; a bad setting becomes one clear line.

    Args:
        factory: The ``OptimizerCallable`` the config gave.
        parameters: The parameters it optimizes.
        key: The model argument holding it (``generator_optimizer``...), named in the message.

    Raises:
        GenlitError: torch refused a setting, or a learning rate is not positive.
    """
    fix = f"set model.init_args.{key}.init_args"
    try:
        optimizer = factory(parameters)
    except (ValueError, TypeError) as err:
        raise GenlitError(f"{key}: {err}: {fix} to a valid value") from err
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if lr is not None and float(lr) <= 0:
            raise GenlitError(f"{key}: learning rate must be > 0, got {float(lr)}: {fix}.lr > 0")
    return optimizer
