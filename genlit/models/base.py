"""The base classes every genlit model derives from.

``GenerativeModel`` is the interface the callbacks use (``sample``, ``latent_dim``), so a user's
own model gets sample grids, scatter plots and metrics for free; it also declares the model's
networks once (``networks``) and runs one update of some of them (:meth:`GenerativeModel.run_phase`).
``AdversarialModel`` holds the alternating discriminator / generator loop shared by every GAN
and WGAN: the subclasses only say what one discriminator step and one generator step compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from genlit import _compat
from genlit.batches import batch_data
from genlit.models import random_state
from genlit.models.buffers import agree_buffers
from genlit.models.capture import CapturedSteps, capture_problem, eager_optimizer_states, ema_update
from genlit.models.compatibility import check_compatible
from genlit.models.divergence import DivergenceGuard
from genlit.models.optimizers import build_optimizer
from genlit.models.phases import frozen, grad_norm


def training_batch_size(trainer: Trainer | None) -> int | None:
    """The per-process batch size of the training data: the datamodule's ``batch_size``, else
    the training DataLoader's; ``None`` when neither says."""
    if trainer is None:
        return None
    for source in (getattr(trainer, "datamodule", None), getattr(trainer, "train_dataloader", None)):
        size = getattr(source, "batch_size", None)
        if isinstance(size, int):
            return size
    return None


class GenerativeModel(LightningModule):
    """A LightningModule that can draw new samples.

    Subclasses implement :meth:`sample`, set ``latent_dim`` and name their networks in
    ``networks``. Models with an encoder also implement ``reconstruct(x)``.

    The ``__init__`` arguments are saved as hyperparameters by this base class, except the
    networks and optimizer factories (the weights are in the state dict; under ``genlit`` the
    CLI records both by import path, so ``GenerativeModel.load_from_checkpoint(path)`` rebuilds
    the model from the checkpoint alone).
    """

    networks: ClassVar[tuple[str, ...]] = ()
    """Attribute (and ``__init__`` argument) names of the model's trained networks.

    The one list every mechanism reads: the checkpoint's architecture check, which networks a
    phase freezes, which arguments are left out of the hyperparameters. An optional network
    may be ``None``.
    """

    latent_dim: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # (*args, **kwargs) as LightningModule's: load_from_checkpoint on this base class then
        # hands the checkpoint's class path on instead of filtering it out.
        super().__init__(*args, **kwargs)
        self._save_init_arguments(inspect.currentframe())
        self.divergence = DivergenceGuard()
        self.ddp_find_unused_parameters = False
        """Whether a training step leaves some parameters without gradient (one network per phase).

        Under DDP genlit then turns on ``find_unused_parameters`` by itself (unless the user set
        it), so ``--trainer.strategy=ddp`` works for two-network models with no extra flag.
        """
        self._rng_to_restore: dict[str, Any] | None = None
        self._completed_at: int | None = None  # the global step complete_training last ran at
        self._direct_steps = False  # see on_train_start

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, reading only tensors and plain containers.

        A checkpoint is data: unpickling anything else could run code the file carries. Pass
        ``weights_only=False`` only for a file from someone you trust.
        """
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )

    def _save_init_arguments(self, frame: Any) -> None:
        # The arguments of every __init__ up the subclass chain; networks and factories are not
        # data (modules are in the state dict, callables would be pickled).
        arguments: dict[str, Any] = {}
        for found in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
            arguments.update(found)
        not_data = [k for k, v in arguments.items() if isinstance(v, nn.Module) or callable(v)]
        self.save_hyperparameters(ignore=[*self.networks, *not_data], frame=frame)

    # --- the interface -------------------------------------------------------------------

    def sample(self, n: int) -> Tensor:
        """Draws ``n`` new samples in data space, on the model's device, without gradients."""
        raise NotImplementedError

    def noise(self, n: int) -> Tensor:
        """Draws ``n`` latent vectors from the prior N(0, I)."""
        return torch.randn(n, self.latent_dim, device=self.device)

    unpack = staticmethod(batch_data)
    """The data tensor of a batch (see :func:`genlit.batches.batch_data`)."""

    def prepare_batch(self, batch: Any) -> Any:
        """A batch straight from a dataloader, moved and decoded as ``training_step`` receives it.

        Runs the transfer hooks Lightning runs before each step (``on_before_batch_transfer``,
        ``transfer_batch_to_device``, ``on_after_batch_transfer``), the datamodule's where it
        overrides them: genlit's in-memory datamodules turn index batches into images there.
        """
        trainer = self.attached_trainer
        datamodule = trainer.datamodule if trainer is not None else None

        def owner(hook: str) -> Any:
            if datamodule is not None and is_overridden(hook, datamodule, LightningDataModule):
                return datamodule
            return self

        batch = owner("on_before_batch_transfer").on_before_batch_transfer(batch, 0)
        batch = owner("transfer_batch_to_device").transfer_batch_to_device(batch, self.device, 0)
        return owner("on_after_batch_transfer").on_after_batch_transfer(batch, 0)

    def declared_networks(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, network)`` for each entry of ``networks`` that is set (optional ones may be None)."""
        for name in self.networks:
            network = getattr(self, name, None)
            if network is not None:
                yield name, network

    @property
    def optimizer_steps_per_generator_step(self) -> int:
        """How many optimizer steps (what ``trainer.global_step`` counts) one generator step makes."""
        return 1

    @property
    def generator_steps_done(self) -> int:
        """Generator updates so far: genlit's unit of budgets, logs and file names.

        Counted from ``trainer.global_step``; models whose optimizer steps per generator step
        can change on resume (a GAN's ``k``) count their updates themselves.
        """
        trainer = self.attached_trainer
        return trainer.global_step // self.optimizer_steps_per_generator_step if trainer is not None else 0

    @property
    def attached_trainer(self) -> Trainer | None:
        """The trainer running this model, or ``None`` outside one."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def logs_this_step(self) -> bool:
        """Whether this training step's metrics are written (every ``log_every_n_steps``).

        Logging every step costs more than a tiny network's whole step: models build their
        metric dict only on the steps Lightning actually writes.
        """
        trainer = self.attached_trainer
        return trainer is not None and _compat.logs_this_step(trainer)

    # --- the end of training, and DDP ranks -------------------------------------------------

    def agree_across_ranks(self) -> None:
        """Makes every DDP rank hold rank 0's model; genlit calls it before each evaluation and
        each checkpoint.

        DDP keeps the parameters equal; this copies rank 0's buffers (batch-norm statistics,
        which each rank's forward passes update) to the others. A model with state of its own
        per rank pools it here first (AE's ex-post Gaussian). A collective: under DDP every
        rank calls it; outside DDP it does nothing.
        """
        agree_buffers(self)

    def complete_training(self) -> None:
        """Runs :meth:`on_training_complete` once, after the last step of a fit that ends.

        genlit calls it before the final evaluation and the final checkpoint, so both see the
        finished model; not after an interruption (the resumed run goes on training).
        """
        trainer = self.attached_trainer
        step = trainer.global_step if trainer is not None else None
        if self._completed_at == step:
            return
        self._completed_at = step
        self.on_training_complete()

    def on_training_complete(self) -> None:
        """Hook: the fit's last training step is done (AE refits its ex-post Gaussian here).

        Runs on every DDP rank; it must leave the random streams as it found them, so that a
        run continued from the final checkpoint matches one that never stopped.
        """

    # --- one update of some networks -----------------------------------------------------

    def run_phase(
        self,
        name: str,
        optimizer: Any,
        trained: nn.Module | Sequence[nn.Module],
        compute: Callable[[], dict[str, Tensor]],
        grad_norm_key: str | None = None,
        keep_gradients: bool = False,
    ) -> dict[str, Tensor]:
        """One update of ``trained``: every other declared network frozen, the loss checked.

        Args:
            name: The loss's log name (``d_loss``, ``g_loss``, ``loss``), used in the
                divergence message.
            optimizer: The optimizer of ``trained``.
            trained: The network(s) this phase updates.
            compute: Returns the phase's outputs, at least ``{"loss": ...}``.
            grad_norm_key: Where to put the gradient norm of ``trained`` in the outputs, on
                logging steps; ``None`` measures nothing.
            keep_gradients: Zero the gradient tensors in place instead of freeing them (a
                captured graph replays into them).

        Returns:
            What ``compute`` returned, plus the gradient norm when measured.
        """
        trained = [trained] if isinstance(trained, nn.Module) else list(trained)
        others = [n for _, n in self.declared_networks() if all(n is not t for t in trained)]
        with frozen(*others):
            out = compute()
            self.check_loss(name, out["loss"])
            measure = grad_norm_key is not None and self.logs_this_step()
            norm = self.step_optimizer(optimizer, out["loss"], trained, measure, keep_gradients)
        if norm is not None:
            out[grad_norm_key] = norm
        return out

    def step_optimizer(
        self,
        optimizer: Any,
        loss: Tensor,
        network: nn.Module | Sequence[nn.Module],
        measure: bool = False,
        keep_gradients: bool = False,
    ) -> Tensor | None:
        """Backward and step; returns the gradient norm of ``network`` when ``measure`` is set."""
        optimizer.zero_grad(set_to_none=not keep_gradients)
        if self._direct_steps:
            loss.backward()
        else:
            self.manual_backward(loss)
        norm = None
        if measure:
            networks = [network] if isinstance(network, nn.Module) else network
            norm = grad_norm(p for n in networks for p in n.parameters())
            # Under 16-mixed the gradients are still multiplied by the loss scale here.
            trainer = self.attached_trainer
            scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
            if scaler is not None and scaler.is_enabled():
                norm = norm / scaler.get_scale()
        if self._direct_steps:
            _compat.step_directly(optimizer)
        else:
            optimizer.step()
        return norm

    def check_loss(self, name: str, value: Tensor | None) -> None:
        """Stops training with one line when a loss is NaN or infinite (see :class:`DivergenceGuard`).

        Raises:
            TrainingDiverged: naming the loss, the step and the likely causes.
        """
        trainer = self.attached_trainer
        step = trainer.global_step if trainer is not None else 0
        self.divergence.check(name, value, step, trainer)
        if self.divergence.pending and self.logs_this_step():
            self.divergence.flush(trainer)

    # --- Lightning hooks -------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        trainer = self.attached_trainer
        if trainer is None:
            return
        if trainer.datamodule is not None:
            check_compatible(self, trainer.datamodule)
        # Lightning wraps the module in DistributedDataParallel after this hook. A GAN's
        # discriminator phase never touches the generator (and the generator phase leaves the
        # discriminator frozen), so DDP must look for parameters without gradient each backward.
        if self.ddp_find_unused_parameters and isinstance(trainer.strategy, DDPStrategy):
            _compat.find_unused_parameters(trainer.strategy)

    def on_fit_start(self) -> None:
        trainer = self.attached_trainer
        if trainer is not None and trainer.world_size > 1:
            # Every rank was seeded alike, so the weights start equal; the noise must not be,
            # or all ranks would train on the same fakes.
            random_state.offset_for_rank(trainer.global_rank)

    def on_train_start(self) -> None:
        # On one device with no backward or optimizer-step hook in use, Lightning's per-step
        # machinery around backward() and step() does nothing but cost host time (a tiny
        # network's step doubles): genlit then calls the two itself (genlit._compat).
        trainer = self.attached_trainer
        self._direct_steps = (
            trainer is not None and not self.automatic_optimization
            and _compat.direct_steps_possible(trainer, self) is None
        )

    def on_train_end(self) -> None:
        self._direct_steps = False

    def on_validation_start(self) -> None:
        self.agree_across_ranks()  # under DDP every rank evaluates rank 0's network

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self.attached_trainer
        self.divergence.flush(trainer)  # never write weights that followed a non-finite loss
        # Every rank calls this hook (Lightning writes rank 0's dict): the ranks agree on the
        # batch-norm statistics the file keeps, and go on from the same ones.
        self.agree_across_ranks()
        # Nor weights that are not finite, or from which no finite sample comes.
        self.divergence.check_model(self, trainer)
        state = checkpoint.get("state_dict")
        if state is not None:
            for name, buffer in self.named_buffers():
                if name in state:
                    state[name] = buffer.detach().clone()
        checkpoint["genlit_rng"] = random_state.capture_all_ranks(trainer.world_size if trainer else 1)
        # What a resumed run compares its own settings with (see genlit.resume).
        checkpoint["genlit_run"] = {
            "generator_steps": self.generator_steps_done,
            "batch_size": training_batch_size(trainer),
            "devices": trainer.world_size if trainer is not None else 1,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored just before the next training batch, not now: between loading and the first
        # step Lightning builds data iterators and may validate, and those must not shift the
        # stream the interrupted run would have continued with.
        trainer = self.attached_trainer
        rank = trainer.global_rank if trainer is not None else 0
        self._rng_to_restore = random_state.for_rank(checkpoint.get("genlit_rng"), rank)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            random_state.restore(self._rng_to_restore)
            self._rng_to_restore = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # Sample-based metrics live in callbacks (they need only ``sample``); the loop must still
        # run for their ``on_validation_epoch_end`` hooks to fire.
        return None

    def test_step(self, batch: Any, batch_idx: int) -> None:
        # As validation: ``genlit test`` runs the loop so the FID callback logs ``test/fid``.
        return None


class AdversarialModel(GenerativeModel):
    """A generator trained against a discriminator (or critic) with alternating updates.

    One training batch is one discriminator update; every ``discriminator_steps``-th batch also
    updates the generator (Goodfellow et al.'s Algorithm 1 with ``k`` discriminator steps per
    generator step; ``n_critic`` in the WGAN papers). Optimization is manual, so
    ``trainer.global_step`` counts optimizer steps: ``discriminator_steps + 1`` per generator
    step. Use ``--generator_steps`` on the command line to state a budget in generator steps.

    Args:
        generator: Network mapping ``(B, latent_dim)`` noise to samples; must expose ``latent_dim``.
        discriminator: Network mapping samples to one raw score each, shape ``(B,)`` (the
            critic of a WGAN).
        generator_optimizer: Optimizer factory for the generator's parameters; ``None`` takes
            the model's ``default_optimizer`` with torch's default settings (Adam; RMSprop for WGAN).
        discriminator_optimizer: Optimizer factory for the discriminator's parameters; ``None``
            as for the generator.
        ema_decay: When set (e.g. 0.999), keep an exponential moving average of the
            generator's weights, updated after every generator step; ``sample`` then uses it.
        compile_generator: Compile the generator with ``torch.compile`` (faster steps after a
            one-off compilation; see ``benchmarks/speed.py``).
        compile_discriminator: Compile the discriminator (ignored, with a warning, by models
            whose discriminator step needs a double backward, which the compiler does not
            support: the gradient penalty of WGAN-GP).
        channels_last: Keep image networks and batches in channels-last memory layout.
        capture: Record the discriminator and the generator phase as CUDA graphs once and
            replay them every step (``genlit.models.capture``): far fewer host costs for small
            networks on a GPU. It needs one CUDA device and 32-true precision; elsewhere, or
            where the step cannot be captured, the run trains eagerly after one warning.
            Checkpoints are the same either way.
    """

    networks = ("generator", "discriminator")
    capturable: ClassVar[bool] = False
    """Whether the family's two phases can be recorded as CUDA graphs (``capture``): device work
    only, no host reads, no Python decision on tensor values inside a phase."""
    default_optimizer: ClassVar[OptimizerCallable] = torch.optim.Adam
    """The optimizer of both networks when the config gives none."""
    double_backward = False
    """Whether the discriminator step differentiates through gradients (a gradient penalty)."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        ema_decay: float | None = None,
        compile_generator: bool = False,
        compile_discriminator: bool = False,
        channels_last: bool = False,
        capture: bool = False,
    ) -> None:
        super().__init__()
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay}")
        if not hasattr(generator, "latent_dim"):
            raise ValueError(
                f"{type(generator).__name__} has no 'latent_dim' attribute: genlit generators "
                "must expose the size of their noise input as `self.latent_dim`."
            )
        self.automatic_optimization = False
        self.ddp_find_unused_parameters = True
        self.generator = generator
        self.discriminator = discriminator
        self.generator_optimizer = generator_optimizer or self.default_optimizer
        self.discriminator_optimizer = discriminator_optimizer or self.default_optimizer
        self.ema_decay = ema_decay
        self.compile_generator = compile_generator
        self.compile_discriminator = compile_discriminator
        self.channels_last = channels_last
        self.capture = capture
        self._captured: CapturedSteps | None = None  # set up at the start of a capturing fit
        self.discriminator_steps = 1
        """Discriminator updates per generator update; each family sets it from its own argument."""
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            # torch's averaging utility: a copy of G whose weights (and batch-norm buffers)
            # follow ema = decay * ema + (1 - decay) * G after each generator update.
            self.generator_ema = AveragedModel(
                generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
            )
            self.generator_ema.requires_grad_(False)
        # Position in the update cycle; kept in checkpoints so a resumed run continues it.
        self.discriminator_updates = 0
        self.generator_updates = 0

    # --- the interface -------------------------------------------------------------------

    @property
    def latent_dim(self) -> int:  # type: ignore[override]
        return int(self.generator.latent_dim)

    @property
    def optimizer_steps_per_generator_step(self) -> int:
        return self.discriminator_steps + 1

    @property
    def generator_steps_done(self) -> int:
        # Counted, not derived from global_step: a run resumed with another k keeps its count.
        return self.generator_updates

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
            return self.generate(self.noise(n), generator)
        finally:
            generator.train(was_training)

    def generate(self, z: Tensor, network: nn.Module | None = None) -> Tensor:
        """Samples ``network(z)`` of latent vectors ``z`` (the generator by default); a family
        whose generator needs an output link (AE-OT-GAN's decoder) overrides it."""
        return (network or self.generator)(z)

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
        opt_g, opt_d = self.optimizers()[:2]  # a family may add optimizers after these
        d_out = self.phase(
            "d_loss", opt_d, self.discriminator, self.discriminator_step, real, self.after_discriminator_update,
            "grad_norm_d",
        )
        self.discriminator_updates += 1
        g_out = None
        if self.is_generator_turn():
            g_out = self.phase(
                "g_loss", opt_g, self.generator, self.generator_step, real.shape[0], self.update_ema, "grad_norm_g"
            )
            self.generator_updates += 1
            self.after_generator_update(g_out)
        if self.logs_this_step():
            self.log_phase("train", d_out, g_out)

    def phase(
        self,
        name: str,
        optimizer: Any,
        trained: nn.Module,
        compute: Callable[[Any], dict[str, Tensor]],
        argument: Tensor | int,
        after: Callable[[], None],
        grad_norm_key: str,
    ) -> dict[str, Tensor]:
        """One update of ``trained`` by ``compute(argument)``, then ``after()``: eager, or
        replayed from its CUDA graph under ``capture``."""
        if self._captured is not None:
            return self._captured.run(name, optimizer, trained, compute, argument, after, grad_norm_key)
        out = self.run_phase(name, optimizer, trained, lambda: compute(argument), grad_norm_key)
        after()
        return out

    def update_ema(self) -> None:
        """Moves the averaged generator towards the generator (after each generator update)."""
        if self.generator_ema is not None:
            ema_update(self.generator_ema, self.generator)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._captured = None
        trainer = self.attached_trainer
        if self.capture and trainer is not None:
            problem = capture_problem(self, trainer)
            if problem is None:
                self._captured = CapturedSteps(self)
            else:
                rank_zero_warn(f"capture is off for this run: {problem}; the steps run eager")

    def on_train_end(self) -> None:
        super().on_train_end()
        self._captured = None

    def is_generator_turn(self) -> bool:
        """True after every ``discriminator_steps``-th discriminator update."""
        return self.discriminator_updates % self.discriminator_steps == 0

    def after_discriminator_update(self) -> None:
        """Hook run after each discriminator update (WGAN clips its weights here)."""

    def after_generator_update(self, outputs: dict[str, Tensor]) -> None:
        """Hook run after each generator update, with the generator step's outputs; values it
        adds to ``outputs`` are logged with them (BEGAN updates and logs ``k`` here)."""

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
        if self._captured is not None:  # the eager layout: a captured run resumes eagerly
            eager_optimizer_states(checkpoint.get("optimizer_states", []), self._captured.capturable_before)
        checkpoint["genlit_counters"] = {
            "discriminator_updates": self.discriminator_updates,
            "generator_updates": self.generator_updates,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.generator_ema is not None:
            self.generator_ema.genlit_started = False  # the first update after loading is torch's own
        counters = checkpoint.get("genlit_counters", {})
        self.discriminator_updates = counters.get("discriminator_updates", 0)
        self.generator_updates = counters.get("generator_updates", 0)
