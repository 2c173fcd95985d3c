"""Does the data fit the networks? Checked before the first step, in one line when it does not."""

from __future__ import annotations

from typing import Any

from torch import nn

from genlit.errors import GenlitError

_SHAPE_KEYS = ("channels", "image_size", "data_dim")


def check_compatible(model: nn.Module, datamodule: Any) -> None:
    """Fails before training when a network was built for other data than the datamodule gives.

    Compares ``channels``, ``image_size`` and ``data_dim`` wherever both the datamodule and a
    child network of the model expose them.

    Raises:
        GenlitError: one line naming the network, both values and the config keys to align.
    """
    image_size = getattr(datamodule, "image_size", None)
    if image_size is not None and getattr(datamodule, "data_dim", None) is None:
        for name, network in model.named_children():
            points = getattr(network, "data_dim", None)
            if points is not None and getattr(network, "image_size", None) is None:
                channels = getattr(datamodule, "channels", "?")
                raise GenlitError(
                    f"the {name} ({type(network).__name__}) takes {points}-D points but "
                    f"{type(datamodule).__name__} gives {channels}x{image_size}x{image_size} "
                    "images: use an image network (e.g. genlit.networks.dcgan) or a 2-D datamodule"
                )
    for key in _SHAPE_KEYS:
        wanted = getattr(datamodule, key, None)
        if wanted is None:
            continue
        for name, network in model.named_children():
            have = getattr(network, key, None)
            if have is not None and have != wanted:
                raise GenlitError(
                    f"{type(datamodule).__name__} gives {key}={wanted} but the {name} "
                    f"({type(network).__name__}) was built for {key}={have}: set "
                    f"model.init_args.{name}.init_args.{key}: {wanted} (or data.init_args.{key}: {have})"
                )
