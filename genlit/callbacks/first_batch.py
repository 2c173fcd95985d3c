"""Data that does not fit the networks, caught at the first training batch in one line.

``genlit fit`` compares the datamodule's declared shape with the networks before training
(:func:`genlit.models.compatibility.check_compatible`). A user's datamodule that declares no
shape is only seen at its first batch: this callback compares that batch with what the
model's networks declare, and names the batch and the network when the first step fails on
a shape all the same.
"""

from __future__ import annotations

import re
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from genlit.errors import GenlitError

# Messages of torch and of genlit's networks when an input has the wrong shape.
_SHAPE_ERROR = re.compile(r"shape|size|dimension|channels|was built for", re.IGNORECASE)


def _describe(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return f"{shape[0]}x{shape[1]}x{shape[2]} images"
    if len(shape) == 1:
        return f"{shape[0]}-D points"
    return f"samples of shape {shape}"


def declared_shape(network: Any) -> tuple[int, ...] | None:
    """The shape of one data sample a network declares: ``(C, H, W)``, ``(D,)`` or None."""
    channels, size = getattr(network, "channels", None), getattr(network, "image_size", None)
    if channels is not None and size is not None:
        return (int(channels), int(size), int(size))
    data_dim = getattr(network, "data_dim", None)
    return (int(data_dim),) if data_dim is not None and size is None else None


class FirstBatchCheck(Callback):
    """Fails in one line when the first training batch does not fit the model's networks.

    Before the first step it compares the batch's sample shape with each declared network's
    ``channels``/``image_size`` (or ``data_dim``), running nothing; when a network declares
    neither and the first step fails on a shape, the error names the batch and the networks.
    """

    def __init__(self) -> None:
        self._shape: tuple[int, ...] | None = None
        self._in_first_step = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._shape is not None or not hasattr(pl_module, "unpack"):
            return
        data = pl_module.unpack(batch)
        self._shape = tuple(int(s) for s in data.shape[1:])
        self._in_first_step = True
        networks = getattr(pl_module, "declared_networks", lambda: iter(()))
        for name, network in networks():
            expected = declared_shape(network)
            if expected is not None and expected != self._shape:
                raise GenlitError(
                    f"the first training batch holds {_describe(self._shape)} but the {name} "
                    f"({type(network).__name__}) was built for {_describe(expected)}: set the "
                    f"networks' channels/image_size (or data_dim) to the data's, or make the "
                    f"datamodule yield {_describe(expected)}"
                )

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._in_first_step = False

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not self._in_first_step or isinstance(exception, GenlitError):
            return
        if not isinstance(exception, (RuntimeError, ValueError)):
            return
        lines = str(exception).strip().splitlines()
        if not lines or not _SHAPE_ERROR.search(lines[0]):
            return
        self._in_first_step = False
        names = ", ".join(
            f"{name} ({type(network).__name__})"
            for name, network in getattr(pl_module, "declared_networks", lambda: iter(()))()
        )
        # Raised here, Lightning's teardown after the hooks is skipped: the first step trained
        # nothing, and the run ends with this line.
        raise GenlitError(
            f"the first training step failed on a batch of {_describe(self._shape or ())} "
            f"({type(exception).__name__}: {lines[0]}): the networks {names or '?'} do not fit "
            "this data; set their channels/image_size (or data_dim) to the data's"
        ) from exception
