"""The base classes every genlit model derives from.

``GenerativeModel`` is the interface the callbacks use (``sample``, ``latent_dim``), so a user's
own model gets sample grids, scatter plots and metrics for free. ``AdversarialModel`` holds the
alternating discriminator / generator loop shared by every GAN and WGAN: the subclasses only
say what one discriminator step and one generator step compute.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from genlit.errors import GenlitError, TrainingDiverged


def _skip_failing_nvml_probe() -> None:
    # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 at import (to keep fork-safe). On a machine
    # with a CUDA build of torch but no NVIDIA driver, every Adam step then tries to load NVML
    # again and fails (about 0.5 ms each, more than a tiny network's whole step). Without a
    # driver there is nothing to keep fork-safe, so let torch use its cached runtime check.
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or not torch.cuda._is_compiled():
        return
    try:
        no_driver = torch.cuda._device_count_nvml() < 0
    except Exception:  # noqa: BLE001 - a private probe: keep Lightning's setting if it changes
        return
    if no_driver:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


_skip_failing_nvml_probe()

# With manual optimization a checkpoint always holds the weights after the step's updates,
# which is what genlit's exact resume relies on; Lightning's warning about it is noise here.
warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
# genlit's datamodules resume mid-epoch through their sampler (datamodules/_resume.py).
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


class GenerativeModel(LightningModule):
    """A LightningModule that can draw new samples.

    Subclasses implement :meth:`sample` and set ``latent_dim``. Models with an encoder also
    implement ``reconstruct(x)``.
    """

    latent_dim: int
    ddp_find_unused_parameters: bool = False
    """Whether a training step leaves some parameters without gradient (one network per phase).

    Under DDP, genlit then turns on ``find_unused_parameters`` by itself (unless the user set
    it), so ``--trainer.strategy=ddp`` works for two-network models with no extra flag.
    """

    def save_config(self, ignore: list[str]) -> None:
        """Saves the ``__init__`` arguments as hyperparameters, networks included under the CLI.

        Launched by ``genlit``, the hyperparameters are the full config (networks and optimizers
        as ``class_path`` entries), so ``GenerativeModel.load_from_checkpoint(path)`` rebuilds
        the model from the checkpoint alone. Built in Python, modules in ``ignore`` are left out
        (their weights are in the state dict already).
        """
        frame = inspect.currentframe().f_back  # the subclass's __init__
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
        else:
            self.save_hyperparameters(ignore=ignore, frame=frame)

    def sample(self, n: int) -> Tensor:
        """Draws ``n`` new samples in data space, on the model's device, without gradients."""
        raise NotImplementedError

    def noise(self, n: int) -> Tensor:
        """Draws ``n`` latent vectors from the prior N(0, I)."""
        return torch.randn(n, self.latent_dim, device=self.device)

    @staticmethod
    def unpack(batch: Tensor | tuple | list | dict) -> Tensor:
        """The data tensor of a batch: ``x`` itself, the first element of ``(x, y)``, or ``batch["x"]``."""
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, dict):
            return batch["x"]
        return batch[0]

    @property
    def optimizer_steps_per_generator_step(self) -> int:
        """How many optimizer steps (what ``trainer.global_step`` counts) one generator step makes."""
        return 1

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            check_compatible(self, datamodule)
        if self._trainer is not None:
            self._configure_ddp(self._trainer.strategy)

    def _configure_ddp(self, strategy: Any) -> None:
        # Lightning wraps the module in DistributedDataParallel after this hook. A GAN's
        # discriminator phase never touches the generator (and the generator phase leaves the
        # discriminator frozen), so DDP must look for parameters without gradient each backward.
        if self.ddp_find_unused_parameters and isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs.setdefault("find_unused_parameters", True)

    # --- random state: exact resume ------------------------------------------------------

    def on_fit_start(self) -> None:
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # Every rank was seeded alike, so the weights start equal; the noise must not be,
            # or all ranks would train on the same fakes. Offset each rank's stream, reproducibly.
            torch.manual_seed((torch.initial_seed() + 104_729 * trainer.global_rank) % 2**63)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # never write weights that followed a non-finite loss
        state = _rng_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            # Lightning calls this hook on every rank and writes rank 0's dict: gather them all.
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
            state = {"per_rank": states}
        checkpoint["genlit_rng"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored just before the next training batch, not now: between loading and the first
        # step Lightning builds data iterators and may validate, and those must not shift the
        # stream the interrupted run would have continued with.
        state = checkpoint.get("genlit_rng")
        if state is not None and "per_rank" in state:
            rank = self._trainer.global_rank if self._trainer is not None else 0
            states = state["per_rank"]
            state = states[rank] if rank < len(states) else None  # other world size: fresh
        self._rng_to_restore = state

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state = self.__dict__.get("_rng_to_restore")
        if state is not None:
            _set_rng_state(state)
            self._rng_to_restore = None

    # --- divergence guard ----------------------------------------------------------------

    def guard(self, losses: dict[str, Tensor | None]) -> None:
        """Stops training with one line when a loss is NaN or infinite.

        On a CPU every step is checked (it costs nothing); on an accelerator the checks are
        queued and read on logging steps and before every checkpoint, so they never stall the
        device, and no checkpoint is ever written after a non-finite loss.

        Raises:
            TrainingDiverged: naming the loss, the step and the likely causes.
        """
        step = self._trainer.global_step if self._trainer is not None else 0
        for name, value in losses.items():
            if value is None:
                continue
            value = value.detach()
            if value.device.type == "cpu":  # reading a CPU scalar costs about a microsecond
                finite = math.isfinite(value.item()) if value.numel() == 1 else bool(value.isfinite().all())
                if not finite:
                    raise TrainingDiverged(self._divergence_message(name, step))
            else:
                self.__dict__.setdefault("_finite_checks", []).append(
                    (name, step, torch.isfinite(value).all())
                )
        if self.__dict__.get("_finite_checks") and self._should_log():
            self.check_finite()

    def check_finite(self) -> None:
        """Reads the queued loss checks; raises :class:`TrainingDiverged` on the first bad one."""
        pending = self.__dict__.get("_finite_checks") or []
        self._finite_checks = []
        if not pending:
            return
        flags = torch.stack([ok for _, _, ok in pending]).cpu()
        if bool(flags.all()):
            return
        name, step, _ = pending[int((~flags).nonzero()[0])]
        raise TrainingDiverged(self._divergence_message(name, step))

    def _divergence_message(self, name: str, step: int) -> str:
        trainer = self._trainer
        precision = getattr(trainer, "precision", "32-true") if trainer is not None else "32-true"
        causes = "a learning rate too high for this model (lower the optimizers' lr)"
        if precision in ("16-mixed", "16-true", "bf16-mixed", "bf16-true"):
            causes += f" or {precision} precision (try --trainer.precision=32-true)"
        last = ""
        callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            last = f"; last good checkpoint: {path}"
        return f"training diverged: train/{name} is not finite at step {step}; likely cause: {causes}{last}"

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # Sample-based metrics live in callbacks (they need only ``sample``); the loop must still
        # run for their ``on_validation_epoch_end`` hooks to fire.
        return None

    def _should_log(self) -> bool:
        # Logging every step costs more than a tiny network's whole step: only build the
        # metric dict on the steps Lightning actually writes (every ``log_every_n_steps``).
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer._logger_connector.should_update_logs


@contextmanager
def frozen(network: nn.Module) -> Iterator[None]:
    """No gradient flows into ``network``'s weights inside the block (the other network's phase).

    What ``LightningModule.toggled_optimizer`` does for two optimizers, at a fraction of its
    per-step cost; weights a user froze stay frozen.
    """
    trainable = [p for p in network.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


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


# Networks are saved in the state dict and optimizer factories are not data; the CLI records
# both in the run's config (and in the checkpoint's hyperparameters) by import path.
_NOT_HPARAMS = ["generator", "discriminator", "generator_optimizer", "discriminator_optimizer"]


def _grad_norm(parameters: list[nn.Parameter]) -> Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


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


def _rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from: torch (CPU and accelerators), NumPy, Python."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # Tensors and plain tuples only: checkpoints must load with weights_only=True.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class AdversarialModel(GenerativeModel):
    """A generator trained against a discriminator (or critic) with alternating updates.

    One training batch is one discriminator update; every ``k``-th batch also updates the
    generator (Goodfellow et al.'s Algorithm 1 with ``k`` discriminator steps per generator
    step). Optimization is manual, so ``trainer.global_step`` counts optimizer steps: ``k + 1``
    per generator step. Use ``--generator_steps`` on the command line to state a budget in
    generator steps.

    Args:
        generator: Network mapping ``(B, latent_dim)`` noise to samples; must expose ``latent_dim``.
        discriminator: Network mapping samples to one raw score each, shape ``(B,)``.
        generator_optimizer: Optimizer factory for the generator's parameters.
        discriminator_optimizer: Optimizer factory for the discriminator's parameters.
        k: Discriminator steps per generator step (n_critic for critics).
        ema_decay: When set (e.g. 0.999), keep an exponential moving average of the
            generator's weights, updated after every generator step; ``sample`` then uses it.
        compile_generator: Compile the generator with ``torch.compile`` (faster steps after a
            one-off compilation; see ``benchmarks/speed.py``).
        compile_discriminator: Compile the discriminator (ignored, with a warning, when a
            gradient penalty needs its double backward, which the compiler does not support).
        channels_last: Keep image networks and batches in channels-last memory layout.
    """

    double_backward = False
    """Whether the discriminator step differentiates through gradients (a gradient penalty)."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        k: int = 1,
        ema_decay: float | None = None,
        compile_generator: bool = False,
        compile_discriminator: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay}")
        if k < 1:
            raise ValueError(f"k (discriminator steps per generator step) must be >= 1, got {k}")
        if not hasattr(generator, "latent_dim"):
            raise ValueError(
                f"{type(generator).__name__} has no 'latent_dim' attribute: genlit generators "
                "must expose the size of their noise input as `self.latent_dim`."
            )
        self.automatic_optimization = False
        self.ddp_find_unused_parameters = True
        self.generator = generator
        self.discriminator = discriminator
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.k = k
        self.ema_decay = ema_decay
        self.compile_generator = compile_generator
        self.compile_discriminator = compile_discriminator
        self.channels_last = channels_last
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            # torch's averaging utility: a copy of G whose weights (and batch-norm buffers)
            # follow ema = decay * ema + (1 - decay) * G after each generator update.
            self.generator_ema = AveragedModel(
                generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
            )
            self.generator_ema.requires_grad_(False)
        # Position in the k-cycle; kept in checkpoints so a resumed run continues the cycle.
        self.discriminator_updates = 0
        self.generator_updates = 0

    # --- the interface -------------------------------------------------------------------

    @property
    def latent_dim(self) -> int:  # type: ignore[override]
        return int(self.generator.latent_dim)

    @property
    def optimizer_steps_per_generator_step(self) -> int:
        return self.k + 1

    @property
    def sampling_generator(self) -> nn.Module:
        """The network ``sample`` uses: the averaged generator when EMA is on."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Draws ``n`` samples ``G(z)``, ``z ~ N(0, I)``, with the generator in eval mode."""
        generator = self.sampling_generator
        was_training = generator.training
        generator.eval()
        try:
            return generator(self.noise(n))
        finally:
            generator.train(was_training)

    def configure_model(self) -> None:
        """Applies the speed options (memory layout, compilation) before training starts."""
        if self.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
        if self.compile_generator:
            self.generator.compile()  # in place: parameter names and checkpoints are unchanged
        if self.compile_discriminator:
            if self.double_backward:
                rank_zero_warn(
                    f"compile_discriminator is ignored for {type(self).__name__}: the gradient "
                    "penalty's double backward is not supported by torch.compile; the critic stays eager"
                )
            else:
                self.discriminator.compile()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            build_optimizer(self.generator_optimizer, self.generator.parameters(), "generator_optimizer"),
            build_optimizer(
                self.discriminator_optimizer, self.discriminator.parameters(), "discriminator_optimizer"
            ),
        ]

    # --- the step ------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.unpack(batch)
        if self.channels_last and real.dim() == 4:
            real = real.contiguous(memory_format=torch.channels_last)
        opt_g, opt_d = self.optimizers()
        log = self._should_log()
        with frozen(self.generator):
            d_out = self.discriminator_step(real)
            self.guard({"d_loss": d_out["loss"]})
            d_out["grad_norm_d"] = self.step_optimizer(opt_d, d_out["loss"], self.discriminator, log)
        self.discriminator_updates += 1
        self.after_discriminator_update()
        g_out = None
        if self.is_generator_turn():
            with frozen(self.discriminator):
                g_out = self.generator_step(real.shape[0])
                self.guard({"g_loss": g_out["loss"]})
                g_out["grad_norm_g"] = self.step_optimizer(opt_g, g_out["loss"], self.generator, log)
            self.generator_updates += 1
            if self.generator_ema is not None:
                self.generator_ema.update_parameters(self.generator)
        if log:
            self.log_phase("train", d_out, g_out)

    def is_generator_turn(self) -> bool:
        """True after every ``k``-th discriminator update."""
        return self.discriminator_updates % self.k == 0

    def step_optimizer(
        self, optimizer: Any, loss: Tensor, network: nn.Module, measure: bool = False
    ) -> Tensor | None:
        """Backward and step; returns the gradient norm of ``network`` when ``measure`` is set."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norm = None
        if measure:
            norm = _grad_norm(list(network.parameters()))
            # Under 16-mixed the gradients are still multiplied by the loss scale here.
            scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer else None
            if scaler is not None and scaler.is_enabled():
                norm = norm / scaler.get_scale()
        optimizer.step()
        return norm

    def after_discriminator_update(self) -> None:
        """Hook run after each discriminator update (WGAN clips its weights here)."""

    def discriminator_step(self, real: Tensor) -> dict[str, Tensor]:
        """The discriminator's loss on one batch; returns at least ``{"loss": ...}``."""
        raise NotImplementedError

    def generator_step(self, batch_size: int) -> dict[str, Tensor]:
        """The generator's loss on ``batch_size`` fresh samples; returns at least ``{"loss": ...}``."""
        raise NotImplementedError

    def generate_detached(self, n: int) -> Tensor:
        """Fake samples for a discriminator step: no graph through the generator."""
        with torch.no_grad():
            return self.generator(self.noise(n))

    # --- logging -------------------------------------------------------------------------

    def log_phase(self, stage: str, d_out: dict[str, Tensor], g_out: dict[str, Tensor] | None) -> None:
        """Logs both phases under one namespace: ``train/d_loss``, ``train/g_loss``, ..."""
        metrics = {f"{stage}/d_loss": d_out["loss"]}
        metrics.update({f"{stage}/{key}": v for key, v in d_out.items() if key != "loss"})
        if g_out is not None:
            metrics[f"{stage}/g_loss"] = g_out["loss"]
            metrics.update({f"{stage}/{key}": v for key, v in g_out.items() if key != "loss"})
        metrics = {key: v.detach() for key, v in metrics.items() if v is not None}
        shown = {key: metrics.pop(key) for key in (f"{stage}/d_loss", f"{stage}/g_loss") if key in metrics}
        self.log_dict(shown, on_step=True, on_epoch=False, prog_bar=True)
        self.log_dict(metrics, on_step=True, on_epoch=False)

    # --- checkpoints ---------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["genlit_counters"] = {
            "discriminator_updates": self.discriminator_updates,
            "generator_updates": self.generator_updates,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        counters = checkpoint.get("genlit_counters", {})
        self.discriminator_updates = counters.get("discriminator_updates", 0)
        self.generator_updates = counters.get("generator_updates", 0)
