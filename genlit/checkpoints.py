"""Reading checkpoints written by ``genlit fit``: one home for loading, checking and rebuilding.

``genlit fit --ckpt_path``, ``genlit sample`` and ``genlit evaluate`` all come here, so a bad
file gets the same one-line answer whichever command was given it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genlit.errors import GenlitError
from genlit.models.base import GenerativeModel
from genlit.models.divergence import model_problem, name_some, nonfinite_tensors

TRUST_FLAG = "--trust_checkpoint"
"""The opt-in of ``genlit fit``, ``sample`` and ``evaluate`` to unpickle a trusted file in full."""


def _unsafe_reason(err: Exception) -> str | None:
    """What ``torch.load(weights_only=True)`` refused to unpickle, or None for another failure."""
    message = str(err)
    refused = isinstance(err, pickle.UnpicklingError) and message.startswith("Weights only load")
    if not refused:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message)  # "... unsupported GLOBAL posix.system ..."
    if found:
        return f"the function or class {found.group(1)}"
    for line in message.splitlines():
        if line.startswith("Unsupported"):  # a pickle no torch.save wrote ("Unsupported operand")
            return line.strip()
    return "an object that is not a tensor or a plain container"


def read_checkpoint(
    path: str | Path, map_location: str = "cpu", trust_checkpoint: bool = False
) -> dict[str, Any]:
    """Loads a checkpoint's dict, or fails in one line.

    A checkpoint is data: it is unpickled with ``weights_only=True`` (tensors and plain
    containers, what genlit writes), so a crafted file cannot run code by being named.

    Args:
        path: The ``.ckpt`` file.
        map_location: Where the tensors go.
        trust_checkpoint: Unpickle everything (``weights_only=False``): only for a file from
            someone you trust, since unpickling can run code the file carries.

    Raises:
        GenlitError: missing, truncated, not a Lightning checkpoint, or holding more than data.
    """
    path = Path(path)
    if not path.is_file():
        raise GenlitError(f"checkpoint {path} does not exist: check the path")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=not trust_checkpoint)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        unsafe = _unsafe_reason(err)
        if unsafe is not None:
            raise GenlitError(
                f"checkpoint {path} holds more than tensors and plain containers ({unsafe}), and "
                f"unpickling it could run code it carries: only if you trust who wrote it, give "
                f"{TRUST_FLAG} (in Python: weights_only=False)"
            ) from None
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise GenlitError(
            f"checkpoint {path} cannot be read ({reason}): the file is truncated or not a "
            "checkpoint; use another one (an earlier last.ckpt), or delete it to start afresh"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GenlitError(
            f"checkpoint {path} is not a Lightning checkpoint (no state_dict): give a file "
            "written by genlit fit"
        )
    state = checkpoint["state_dict"]
    bad = nonfinite_tensors(state.items()) if isinstance(state, dict) else []
    if bad:
        raise GenlitError(
            f"checkpoint {path} holds weights that are not finite ({name_some(bad)}): "
            "it was written after training diverged; use an earlier checkpoint, or train again "
            "with a lower learning rate"
        )
    return checkpoint


def architecture(model_class: type[GenerativeModel], class_path: str, init_args: dict[str, Any]) -> tuple:
    """The model class and its declared networks (class and arguments): what the weights depend on.

    Args:
        model_class: The model class whose ``networks`` say which arguments are networks.
        class_path: The model's class path as a config or a checkpoint records it.
        init_args: The model's arguments as recorded there (networks as ``class_path`` dicts).
    """
    networks = []
    for key in model_class.networks:
        network = init_args.get(key)
        if isinstance(network, dict):
            arguments = network.get("init_args") or {}
            name = str(network.get("class_path", "")).rsplit(".", 1)[-1]
            networks.append((key, name, sorted(arguments.items())))
    return (class_path.rsplit(".", 1)[-1], tuple(networks))


def describe(arch: tuple) -> str:
    """``GAN, generator DCGANGenerator, discriminator DCGANDiscriminator``."""
    model, networks = arch
    return model + "".join(f", {key} {name}" for key, name, _ in networks)


def check_same_architecture(
    path: str | Path, checkpoint: dict[str, Any], model_class: type[GenerativeModel], config: dict[str, Any]
) -> None:
    """Fails unless the checkpoint's recorded model config builds the same networks as ``config``.

    Checkpoints written outside the CLI record no config; their weights are checked after the
    model is built (:func:`check_weights_fit`).

    Raises:
        GenlitError: naming both architectures.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    if "_class_path" not in saved:
        return
    theirs = architecture(model_class, saved["_class_path"], saved)
    ours = architecture(model_class, config.get("class_path", ""), config.get("init_args") or {})
    if theirs != ours:
        raise GenlitError(
            f"checkpoint {path} was written by a different model ({describe(theirs)}) than the "
            f"config's ({describe(ours)}): resume with the config it was trained with"
        )


def check_weights_fit(path: str | Path, checkpoint: dict[str, Any], model: nn.Module) -> None:
    """Fails in one line unless the checkpoint's weights have ``model``'s names and shapes.

    Raises:
        GenlitError: weights of another model or another network size.
    """
    expected, found = set(model.state_dict()), set(checkpoint["state_dict"])
    if expected != found:
        missing = sorted(expected - found)[:3]
        unexpected = sorted(found - expected)[:3]
        raise GenlitError(
            f"checkpoint {path} was written by a different model or network size (missing "
            f"{missing}, unexpected {unexpected}): resume with the config it was trained with"
        )
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for key, value in checkpoint["state_dict"].items():
        if hasattr(value, "shape") and value.shape != shapes[key]:
            raise GenlitError(
                f"checkpoint {path} was written by a different network size ({key}: "
                f"{tuple(value.shape)} there, {tuple(shapes[key])} here): resume with the config "
                "it was trained with"
            )


def check_usable(path: str | Path, checkpoint: dict[str, Any], model: nn.Module) -> None:
    """Fails in one line when the checkpoint's weights, put into ``model``, give no finite sample.

    :func:`read_checkpoint` already refuses non-finite weights; finite but huge ones (a learning
    rate far too high) are found here. ``model`` keeps the checkpoint's weights afterwards.

    Raises:
        GenlitError: saying what is not finite.
    """
    model.load_state_dict(checkpoint["state_dict"])
    was_training = model.training
    try:
        _refuse_unusable(path, model.eval())
    finally:
        model.train(was_training)


def _refuse_unusable(path: str | Path, model: nn.Module) -> None:
    """Raises ``GenlitError`` when the model (in eval mode) has non-finite weights or samples."""
    problem = model_problem(model)
    if problem is not None:
        raise GenlitError(
            f"checkpoint {path} is unusable: {problem}; its training diverged, use an earlier "
            "checkpoint, or train again with a lower learning rate"
        )


def load_model(
    ckpt: str | Path, map_location: str = "cpu", trust_checkpoint: bool = False
) -> GenerativeModel:
    """Rebuilds a model, in eval mode, from a checkpoint written by ``genlit fit``.

    Args:
        ckpt: The ``.ckpt`` file.
        map_location: Where the weights go.
        trust_checkpoint: Unpickle everything (see :func:`read_checkpoint`).

    Raises:
        GenlitError: the file is missing, truncated, not a genlit checkpoint, or holds more
            than data (without ``trust_checkpoint``).
    """
    path = Path(ckpt)
    checkpoint = read_checkpoint(path, map_location, trust_checkpoint)
    if "_class_path" not in (checkpoint.get("hyper_parameters") or {}):
        raise GenlitError(
            f"checkpoint {path} was not written by `genlit fit` (no model config inside): "
            "load it in Python with YourModel.load_from_checkpoint(path, generator=..., ...)"
        )
    try:
        model = GenerativeModel.load_from_checkpoint(
            path, map_location=map_location, weights_only=not trust_checkpoint
        )
    except Exception as err:  # noqa: BLE001
        raise GenlitError(f"checkpoint {path} does not match its model config: {err}") from None
    _refuse_unusable(path, model.eval())
    return model
