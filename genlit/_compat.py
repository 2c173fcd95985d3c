"""Every reach into another library's private API, in one place.

Where Lightning, torch, wandb, torchmetrics or jsonargparse offer no public route to what genlit
needs, the reach is made here and nowhere else, and ``tests/test_compat.py`` checks each one
against the installed library: an upgrade that moves the attribute fails there, loudly, not
somewhere in the middle of a run.
"""

from __future__ import annotations

import os
from typing import Any

import torch

# --- lightning ---------------------------------------------------------------------------------


def logs_this_step(trainer: Any) -> bool:
    """Whether Lightning writes logged metrics at the current training step.

    Building a metric dict every step costs more than a tiny network's whole step, so models
    build it only when it is written (every ``log_every_n_steps``). Lightning keeps the answer
    on its logger connector.
    """
    return bool(trainer._logger_connector.should_update_logs)


def logged_step(trainer: Any) -> int:
    """The x-axis value Lightning logs metrics against: batches that stepped, not optimizer steps.

    Pictures sent to a logger use it too, so they line up with the losses.
    """
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def find_unused_parameters(strategy: Any) -> None:
    """Turns on DDP's ``find_unused_parameters`` for an already built DDP strategy, unless set.

    The public route is the strategy name ``ddp_find_unused_parameters_true``, which ``genlit
    fit`` chooses by itself for ``--trainer.strategy=ddp``; a Trainer built in Python with a
    ``DDPStrategy`` object only offers its constructor keywords, kept here.
    """
    strategy._ddp_kwargs.setdefault("find_unused_parameters", True)


class KeepConfigModelOnResume:
    """A LightningCLI mixin: ``--ckpt_path`` does not merge the checkpoint's hyperparameters.

    LightningCLI loads a checkpoint's hyperparameters over the config's model before anything
    is built (its private ``_parse_ckpt_path``); genlit instead checks that the file fits the
    config's model (:meth:`check_resume_checkpoint`), so a resume never silently trains other
    networks than the YAML says.
    """

    def _parse_ckpt_path(self) -> None:
        self.check_resume_checkpoint()

    def check_resume_checkpoint(self) -> None:
        """Checks the checkpoint named by ``--ckpt_path`` before the classes are built."""


# --- torch -------------------------------------------------------------------------------------


def skip_failing_nvml_probe() -> None:
    """Lets torch use its cached CUDA check where NVML cannot be loaded (no NVIDIA driver).

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` at import (to stay fork-safe). On a
    machine with a CUDA build of torch but no driver, every Adam step then tries to load NVML
    again and fails (about 0.5 ms each, more than a tiny network's whole step). Without a
    driver there is nothing to keep fork-safe. Called by the ``genlit`` command, never at import.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or not torch.cuda._is_compiled():
        return
    try:
        no_driver = torch.cuda._device_count_nvml() < 0
    except Exception:  # noqa: BLE001 - a private probe: keep Lightning's setting if it changes
        return
    if no_driver:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


# --- torchmetrics ------------------------------------------------------------------------------

# FrechetInceptionDistance's states of the real side (``add_state`` names, torchmetrics >= 1.0).
FID_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def set_fid_real_statistics(
    fid: Any, features_sum: torch.Tensor, cov_sum: torch.Tensor, num_samples: int
) -> None:
    """Makes cached sums the real side of a torchmetrics ``FrechetInceptionDistance``.

    torchmetrics fills the real side only through ``update(images, real=True)``, a pass over
    the real images that the reference cache exists to avoid; its three states are set here
    instead, in the dtype and on the device of the states they replace. They are summed over
    DDP ranks at ``compute``, so a rank that does not hold the reference sets zeros.

    Args:
        fid: The metric.
        features_sum: Sum of the real features ``(d,)``.
        cov_sum: Sum of their outer products ``(d, d)``.
        num_samples: Number of real images.

    Raises:
        RuntimeError: the installed torchmetrics keeps the real side under other names or shapes.
    """
    values = {
        "real_features_sum": features_sum,
        "real_features_cov_sum": cov_sum,
        "real_features_num_samples": torch.tensor(num_samples),
    }
    for name in FID_REAL_STATES:
        state = getattr(fid, name, None)
        if not isinstance(state, torch.Tensor) or state.shape != values[name].shape:
            found = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise RuntimeError(
                f"torchmetrics' FrechetInceptionDistance has no state {name} of shape "
                f"{tuple(values[name].shape)} (found {found}): update genlit._compat"
            )
    for name in FID_REAL_STATES:
        setattr(fid, name, values[name].to(getattr(fid, name)))  # the state's dtype and device


def kid_fake_features(kid: Any) -> torch.Tensor:
    """The generated features ``(N, d)`` a torchmetrics ``KernelInceptionDistance`` has kept.

    torchmetrics offers them only to its own ``compute``; genlit's KID with fixed real
    features computes from them itself. ``(0, 0)`` when there are none yet.

    Raises:
        RuntimeError: the installed torchmetrics keeps them under another name.
    """
    from torchmetrics.utilities.data import dim_zero_cat

    state = getattr(kid, "fake_features", None)
    if not isinstance(state, (list, torch.Tensor)):
        raise RuntimeError(
            "torchmetrics' KernelInceptionDistance has no list state fake_features: "
            "update genlit._compat"
        )
    if isinstance(state, list) and not state:
        return torch.zeros(0, 0)
    return dim_zero_cat(state)


# --- wandb -------------------------------------------------------------------------------------


def wandb_init_arguments(logger: Any) -> dict[str, Any]:
    """The keyword arguments Lightning's ``WandbLogger`` will start its run with.

    The live dictionary: what is changed in it before the run starts is what ``wandb.init``
    receives, so genlit picks this run's mode (and, after a failed online start, a fresh id)
    without setting ``WANDB_MODE`` for the whole process. Lightning keeps it as
    ``WandbLogger._wandb_init``.

    Args:
        logger: A ``lightning.pytorch.loggers.WandbLogger``.
    """
    return logger._wandb_init


def complete_batch_progress(trainer: Any) -> None:
    """Marks the current training batch completed, as Lightning does after its last hook.

    A checkpoint saved from a failed ``on_train_batch_end`` hook would otherwise hold the batch
    as processed but not completed, and the resumed run would train it a second time. Reads
    ``fit_loop.epoch_loop.batch_progress`` (Lightning's loop progress, not a documented API).
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    if progress.current.processed > progress.current.completed:
        progress.increment_completed()


# Hooks a direct step would skip: where any callback or the module overrides one, Lightning's
# own backward and optimizer step run instead.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "backward")


def direct_steps_possible(trainer: Any, module: Any) -> str | None:
    """Why Lightning's per-step machinery must run for ``module``'s manual steps, or ``None``.

    With manual optimization, ``manual_backward`` and ``LightningOptimizer.step`` run the
    precision plugin, the strategy and five hooks per optimizer step: for a tiny network, or any
    network on a GPU, more host time than the step's own kernels. On one device in full (or
    scaler-free mixed) precision, with none of those hooks overridden, they do nothing but call
    ``loss.backward()`` and ``optimizer.step()``; genlit then calls those itself, keeping
    Lightning's step counting and profiler marks (:func:`step_directly`).
    """
    from lightning.pytorch import Callback, LightningModule
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if type(trainer.strategy) is not SingleDeviceStrategy:
        return f"the {type(trainer.strategy).__name__} strategy"
    plugin = trainer.precision_plugin
    if type(plugin) is not Precision and not (type(plugin) is MixedPrecision and plugin.scaler is None):
        return f"{trainer.precision} precision"
    for hook in STEP_HOOKS:
        for callback in trainer.callbacks if hook != "backward" else ():
            if is_overridden(hook, callback, Callback):
                return f"the {type(callback).__name__} callback's {hook}"
        if is_overridden(hook, module, LightningModule):
            return f"{type(module).__name__}.{hook}"
    return None


def step_directly(optimizer: Any, replayed: bool = False) -> None:
    """``LightningOptimizer.step()`` without the strategy and precision plugin in between.

    Runs the same marks Lightning's manual loop sets around every step (its step counter, which
    ``trainer.global_step`` reads, and the ``optimizer_step`` profiler section), with the wrapped
    torch optimizer's ``step()`` between them, or nothing between them when a CUDA graph
    replay has just made the step (``replayed``). Only where :func:`direct_steps_possible` says so.
    """
    optimizer._on_before_step()
    if not replayed:
        optimizer.optimizer.step()
    optimizer._on_after_step()


# --- torch-fidelity ----------------------------------------------------------------------------


def precision_recall(fake: torch.Tensor, real: torch.Tensor, nearest_k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s improved precision and recall of features, by torch-fidelity.

    torch-fidelity computes them only from its own inputs through ``calculate_metrics``; its
    feature-level function lives in ``torch_fidelity.metric_prc``, not in the package's API.

    Args:
        fake: Generated features ``(N, d)``.
        real: Real features ``(M, d)``.
        nearest_k: The k of the k-nearest-neighbour balls.

    Raises:
        RuntimeError: the installed torch-fidelity has moved the function.
    """
    try:
        from torch_fidelity.metric_prc import prc_features_to_metric
    except ImportError as err:
        raise RuntimeError(
            f"torch-fidelity has no metric_prc.prc_features_to_metric ({err}): update genlit._compat"
        ) from None
    values = prc_features_to_metric(
        fake.float(), real.float(), prc_neighborhood=nearest_k, prc_batch_size=4096,
        save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    return float(values["precision"]), float(values["recall"])
