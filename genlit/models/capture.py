"""The captured adversarial step: each phase recorded once as a CUDA graph, then replayed.

A DCGAN-sized step on a GPU is bound by the host: Python, Lightning's loop and one kernel
launch per operation cost more than the kernels. With ``capture: true`` the discriminator phase
(its forward, the loss, the backward, the optimizer step, WGAN's clipping) and the generator
phase (the same, plus the EMA update) are each recorded once as a CUDA graph, and every later
step copies its batch into the graph's input buffer and replays the graph: one launch per phase.

What stays as in eager mode: the losses and their order, the ``k`` / ``n_critic`` cycle and
its counters (kept in Python, outside the graphs), the noise (torch's CUDA generator advances
in a captured region exactly as it would eagerly), the divergence check and the logged values
(read from the graphs' outputs after each replay), and checkpoints, which are written in the
eager layout so that a captured run resumes eagerly and the other way round. What changes:
each optimizer runs its ``capturable`` form (Adam's bias correction on the device instead of in
Python floats: the same update to float32 rounding, not bitwise the non-capturable one).

The first :data:`WARMUP` updates of each phase run eagerly on the capture stream (they create
the optimizer state and let cuDNN pick its kernels), then the phase is captured. A batch of
another size than the captured one (a last, smaller batch) runs eagerly. Capture needs one
CUDA device, 32-true precision, optimizers with a capturable form (Adam, AdamW, RMSprop, SGD
and the others of ``torch.optim`` that take ``capturable``) and a step without host reads; where
any is missing, or the capture itself fails, the run trains eagerly after one warning.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from genlit import _compat
from genlit.models.phases import frozen, grad_norm

WARMUP = 3
"""Eager updates of each phase before it is captured."""


def capture_problem(model: Any, trainer: Any) -> str | None:
    """Why ``model``'s steps cannot be captured in this run, or ``None``."""
    if not getattr(type(model), "capturable", False):
        return f"{type(model).__name__}'s step is not declared capturable"
    if trainer.precision != "32-true":
        return f"it runs in 32-true precision only, not {trainer.precision}"
    machinery = _compat.direct_steps_possible(trainer, model)
    if machinery is not None:
        return f"{machinery} needs Lightning's per-step machinery"
    for optimizer in trainer.optimizers:
        if "capturable" not in optimizer.defaults and not isinstance(optimizer, torch.optim.SGD):
            return f"the {type(optimizer).__name__} optimizer has no capturable form"
    if model.device.type != "cuda":
        return f"CUDA graphs need a CUDA device, and this run trains on {model.device.type}"
    return None


def make_capturable(optimizer: torch.optim.Optimizer) -> list[bool]:
    """Switches ``optimizer`` to its capturable form, its step counters moved to the device.

    Returns:
        Each parameter group's ``capturable`` before (what checkpoints keep writing).
    """
    if "capturable" not in optimizer.defaults:
        return []  # SGD: no step counter, graph-safe as it is
    before = [bool(group.get("capturable", False)) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
    return before


def eager_optimizer_states(states: list[dict[str, Any]], before: list[list[bool]] | None = None) -> None:
    """Rewrites optimizer state dicts of a captured run in the layout an eager run writes.

    ``capturable`` back to what the config gave (``before``, from :func:`make_capturable`; off
    when not given) and step counters as CPU tensors: a checkpoint of a captured run then loads
    into an eager run on any machine, a CPU one included. The live optimizers are untouched
    (their per-parameter dicts are replaced in the copy, not changed).
    """
    for index, state in enumerate(states):
        flags = before[index] if before is not None and index < len(before) else []
        for number, group in enumerate(state.get("param_groups", [])):
            if "capturable" in group:
                group["capturable"] = flags[number] if number < len(flags) else False
        per_param = state.get("state", {})
        for key, values in list(per_param.items()):
            step = values.get("step")
            if isinstance(step, Tensor) and step.device.type != "cpu":
                per_param[key] = {**values, "step": step.detach().to("cpu", torch.float32)}


def ema_update(averaged: AveragedModel, model: nn.Module) -> None:
    """``averaged.update_parameters(model)`` without its host read once averaging has begun.

    torch's update reads ``n_averaged == 0`` on the host every call (a device synchronisation
    per generator step on a GPU, and no CUDA graph can hold it). The first update here is
    torch's own; later ones run the same averaging function on the same tensor groups, which is
    all torch does once ``n_averaged > 0``.
    """
    if not getattr(averaged, "genlit_started", False) or averaged.multi_avg_fn is None:
        averaged.update_parameters(model)
        averaged.genlit_started = True
        return
    if averaged.use_buffers:
        mine = list(chain(averaged.module.parameters(), averaged.module.buffers()))
        theirs = list(chain(model.parameters(), model.buffers()))
    else:
        mine, theirs = list(averaged.parameters()), list(model.parameters())
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for p_averaged, p_model in zip(mine, theirs, strict=False):
        group = groups.setdefault((p_averaged.device, p_averaged.dtype), ([], []))
        group[0].append(p_averaged.detach())
        group[1].append(p_model.detach().to(p_averaged.device))
    for (device, _), (averaged_group, model_group) in groups.items():
        averaged.multi_avg_fn(averaged_group, model_group, averaged.n_averaged.to(device))
    if not averaged.use_buffers:
        for b_averaged, b_model in zip(averaged.module.buffers(), model.buffers(), strict=True):
            b_averaged.detach().copy_(b_model.detach().to(b_averaged.device))
    averaged.n_averaged += 1


class PhaseGraph:
    """One phase (a network's loss, backward and optimizer step) as a replayable CUDA graph.

    Args:
        name: The phase's network, for messages.
        stream: The side stream the warm-up and the capture run on.
    """

    def __init__(self, name: str, stream: Any) -> None:
        self.name = name
        self.stream = stream
        self.graph: Any = None
        self.input: Tensor | int | None = None  # the batch buffer, or the batch size of a generator phase
        self.outputs: dict[str, Tensor] = {}
        self.updates = 0  # eager updates so far: the warm-up
        self.failed = False

    def fits(self, argument: Tensor | int) -> bool:
        """Whether the captured graph takes this step's input (a batch of the captured shape)."""
        if self.graph is None:
            return False
        if isinstance(argument, Tensor):
            return isinstance(self.input, Tensor) and argument.shape == self.input.shape
        return argument == self.input

    def replay(self, argument: Tensor | int) -> dict[str, Tensor]:
        """Fills the input buffer and replays; returns the outputs (overwritten by the next replay)."""
        if isinstance(argument, Tensor):
            self.input.copy_(argument)  # type: ignore[union-attr]
        self.graph.replay()
        return self.outputs

    def capture(
        self,
        argument: Tensor | int,
        optimizer: torch.optim.Optimizer,
        others: list[nn.Module],
        compute: Callable[[Tensor | int], dict[str, Tensor]],
        after: Callable[[], None],
    ) -> bool:
        """Records the phase without running it; ``False``, after one warning, when it cannot."""
        static = argument.clone() if isinstance(argument, Tensor) else argument
        optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates what it replays into
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self.stream), torch.cuda.graph(graph, stream=self.stream), frozen(*others):
                outputs = compute(static)
                outputs["loss"].backward()
                optimizer.step()
                after()
        except Exception as err:  # noqa: BLE001 - whatever the step does that a graph cannot hold
            optimizer.zero_grad(set_to_none=True)
            self.failed = True
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            rank_zero_warn(f"capture: the {self.name} phase cannot be captured ({reason}); it runs eager")
            return False
        finally:
            torch.cuda.current_stream().wait_stream(self.stream)
        self.graph, self.input = graph, static
        self.outputs = {key: value for key, value in outputs.items() if isinstance(value, Tensor)}
        return True


class CapturedSteps:
    """The phases of one adversarial model's run: warmed up, captured, replayed.

    Args:
        model: The :class:`~genlit.models.base.AdversarialModel` being trained, on a CUDA device.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.stream = torch.cuda.Stream(device=model.device)
        self.phases: dict[str, PhaseGraph] = {}
        self.capturable_before = [make_capturable(optimizer) for optimizer in model.trainer.optimizers]
        """Each optimizer's groups' ``capturable`` as configured: what checkpoints keep."""

    def run(
        self,
        name: str,
        optimizer: Any,
        trained: nn.Module,
        compute: Callable[[Tensor | int], dict[str, Tensor]],
        argument: Tensor | int,
        after: Callable[[], None],
        grad_norm_key: str,
    ) -> dict[str, Tensor]:
        """One update of ``trained``: replayed, or eager (warm-up, another batch size, no graph).

        ``after`` (WGAN's clipping, the EMA update) runs right after the optimizer step, inside
        the graph when there is one.
        """
        model = self.model
        phase = self.phases.setdefault(name, PhaseGraph(type(trained).__name__, self.stream))
        if phase.graph is None and not phase.failed and phase.updates >= WARMUP:
            others = [n for _, n in model.declared_networks() if n is not trained]
            phase.capture(argument, optimizer.optimizer, others, compute, after)
        if phase.fits(argument):
            out = dict(phase.replay(argument))
            _compat.step_directly(optimizer, replayed=True)  # Lightning counts the step
            model.check_loss(name, out["loss"])
            if model.logs_this_step():  # read after the batch: kept from the next replay
                out = {key: value.clone() for key, value in out.items()}
                out[grad_norm_key] = grad_norm(trained.parameters())
            return out
        # Eager, on the capture stream; gradients a graph replays into are zeroed, not freed.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = model.run_phase(name, optimizer, trained, lambda: compute(argument), grad_norm_key,
                                  keep_gradients=phase.graph is not None)
            after()
        torch.cuda.current_stream().wait_stream(self.stream)
        phase.updates += 1
        return out
