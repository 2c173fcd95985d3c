"""AE-OT (An et al., ICLR 2020): an autoencoder whose sampler is a semi-discrete OT map.

A generator is an embedding plus a transport map from noise to the codes (Lei, Su, Cui, Yau,
Gu 2019). Where the codes' support has gaps or is not convex, the optimal map is discontinuous,
and a continuous network asked for it collapses or mixes modes. AE-OT does not train a network
for the map: it computes the Brenier potential of the uniform box to the training codes
(:class:`genlit.ot.SemiDiscreteOT`) and samples by its extended map, which makes new codes
inside the support and never across a singular facet. The autoencoder trains as :class:`AE`
does; the OT fit runs once the training is complete (its own stage, with a progress bar and
``ot/*`` metrics), and the fitted map travels in every checkpoint written after it.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from genlit.batches import full_pass
from genlit.errors import GenlitError
from genlit.models import random_state
from genlit.models.ae import AE
from genlit.models.buffers import distributed
from genlit.ot import FitReport, GenerationStats, SemiDiscreteOT

OT_KEY = "genlit_ot"
"""Where checkpoints keep the fitted map (codes, heights, settings): tensors and plain values."""
POSITIONS_KEY = "genlit_ot_positions"
"""Where checkpoints keep the training positions of the map's codes (when the batches had them)."""


def save_ot(checkpoint: dict[str, Any], ot: SemiDiscreteOT | None) -> None:
    """Puts a fitted map into a checkpoint dict (on the CPU; nothing when there is none)."""
    if ot is not None:
        checkpoint[OT_KEY] = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in ot.state_dict().items()}


def load_ot(checkpoint: dict[str, Any], latent_dim: int) -> SemiDiscreteOT | None:
    """The map a checkpoint holds (``None`` when it has none), checked against ``latent_dim``.

    Raises:
        GenlitError: the map's codes have another dimension than the model's latent space.
    """
    state = checkpoint.get(OT_KEY)
    if state is None:
        return None
    dim = int(state["points"].shape[1])
    if dim != latent_dim:
        raise GenlitError(
            f"the checkpoint's OT map has codes of dimension {dim}, this model's latent_dim is "
            f"{latent_dim}: build the encoder and decoder with latent_dim: {dim}"
        )
    return SemiDiscreteOT.from_state_dict(state)


def _their_latent_dim(own: dict[str, Tensor], theirs: dict[str, Tensor], latent_dim: int) -> int | None:
    """The latent size a checkpoint's decoder was built with, read off its first weight: the
    axis of that weight that has ``latent_dim`` entries here."""
    key = next((k for k, v in own.items() if k.startswith("decoder.") and v.dim() >= 2), None)
    if key is None or key not in theirs or theirs[key].dim() != own[key].dim():
        return None
    axes = [axis for axis, size in enumerate(own[key].shape) if size == latent_dim]
    return int(theirs[key].shape[axes[0]]) if axes else None


class CarriesOTMap:
    """The fitted OT map (``self.ot``) in every checkpoint, and on the model's device for a fit.

    Mixed into :class:`AEOT` and :class:`genlit.models.AEOTGAN` before their Lightning base.
    """

    ot: SemiDiscreteOT | None
    ot_positions: Tensor | None = None
    """The training positions of the map's codes (``data.init_args.indices: true``), else None."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        save_ot(checkpoint, self.ot)
        if self.ot is not None and self.ot_positions is not None:
            checkpoint[POSITIONS_KEY] = self.ot_positions.cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        ot = load_ot(checkpoint, self.latent_dim)  # type: ignore[attr-defined]
        if ot is not None:
            self.ot = ot.to(self.device)  # type: ignore[attr-defined]
            self.ot_positions = checkpoint.get(POSITIONS_KEY)

    def copying_members(self) -> Tensor | None:
        """The training positions of the codes the OT map holds, for the member test of
        :mod:`genlit.metrics.copying` (``None`` when the batches gave no positions).

        Raises:
            GenlitError: no map has been fitted yet.
        """
        if self.ot is None:
            raise GenlitError(f"{type(self).__name__} has no fitted OT map yet: the member test needs one")
        return self.ot_positions

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[misc]
        if self.ot is not None:
            self.ot.to(self.device)  # type: ignore[attr-defined]


class AEOT(CarriesOTMap, AE):
    """An autoencoder whose ``sample`` decodes codes from the semi-discrete OT map (AE-OT).

    Training is :class:`AE`'s (reconstruction only; the ex-post Gaussian is fitted too, so one
    checkpoint compares both samplers: ``sampler``). When the fit completes, ``ot_codes``
    training codes (encoder in eval mode) become the OT target, and the map is fitted to the
    tolerance or the time limit. ``sample`` draws from the ex-post Gaussian until the map exists.

    With :class:`genlit.networks.autoencoders.IdentityEmbedding` as encoder and decoder, the
    data are the codes (the toy experiments): nothing is trained, the fit's batches only feed
    the map.

    Args:
        *args: ``encoder, decoder, optimizer`` in this order (see :class:`AE`).
        ot_codes: Training codes the map is fitted to (the first ones the training loader
            gives); the solver's cost grows as codes x Monte Carlo points.
        ot_tolerance: Total variation between cell measures and code masses to stop at, measured
            on points the fit never used (their sampling noise taken out).
        ot_max_seconds: Time limit of the OT fit (it then keeps the heights it reached and
            says so).
        ot_points_per_cell: Monte Carlo points per code at the start of the fit (``null``: the
            method's default, 8 for newton).
        ot_method: The OT solver: ``newton`` (damped Newton, the default) or ``adam`` (pyOMT's
            method, for comparison).
        k: Cells the generation map examines per noise point (its own and ``k - 1`` others).
        angle_threshold: pyOMT's fixed test: the largest angle (radians) between the
            potential's facets that the map interpolates across (0.7 for its CelebA codes);
            ``null`` (the default): the calibrated, scale-free test (a facet is singular when its
            other code is farther than the ``singular_neighbours``-th nearest code).
        weight: Interpolation weight ``w`` of a new code ``(1 - w) y_i + w y_j``; ``null`` (the
            default) draws it uniformly, so every sample is a new code; pyOMT's 0.75 gives at
            most ``N (k - 1)`` distinct codes.
        singular_neighbours: The calibrated test's neighbour rank.
        sampler: ``ot`` (the map) or ``gaussian`` (the ex-post Gaussian of the same AE).
        fit_ot_on_train_end: Fit the map when the fit completes; ``false`` keeps a loaded one.
        autoencoder_checkpoint: Start from the encoder and decoder of this trained AE (or
            AE-OT) checkpoint instead of fresh weights.
        freeze_autoencoder: Do not train the networks: the fit's batches only collect codes
            (with ``autoencoder_checkpoint``, and always for an identity embedding).
        **kwargs: The other arguments of :class:`AE`.
    """

    def __init__(
        self,
        *args: Any,
        ot_codes: int = 10_000,
        ot_tolerance: float = 0.02,
        ot_max_seconds: float = 600.0,
        ot_points_per_cell: float | None = None,
        ot_method: Literal["newton", "adam"] = "newton",
        k: int = 20,
        angle_threshold: float | None = None,
        weight: float | None = None,
        singular_neighbours: int = 10,
        sampler: Literal["ot", "gaussian"] = "ot",
        fit_ot_on_train_end: bool = True,
        autoencoder_checkpoint: str | None = None,
        freeze_autoencoder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if ot_codes < 2:
            raise ValueError(f"ot_codes must be >= 2 (the OT target needs two codes or more), got {ot_codes}")
        if ot_tolerance <= 0 or ot_max_seconds <= 0 or (ot_points_per_cell is not None and ot_points_per_cell <= 0):
            raise ValueError("ot_tolerance, ot_max_seconds and ot_points_per_cell must be > 0")
        if ot_method not in ("newton", "adam"):
            raise ValueError(f"unknown ot_method {ot_method!r}: choose 'newton' or 'adam'")
        if k < 1 or singular_neighbours < 1:
            raise ValueError(f"k and singular_neighbours must be >= 1, got {k} and {singular_neighbours}")
        if angle_threshold is not None and not 0 < angle_threshold < math.pi:
            raise ValueError(f"angle_threshold must lie in (0, pi) radians (or be null), got {angle_threshold}")
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1] (or be null), got {weight}")
        if sampler not in ("ot", "gaussian"):
            raise ValueError(f"unknown sampler {sampler!r}: choose 'ot' or 'gaussian'")
        self.ot_codes, self.ot_tolerance, self.ot_max_seconds = ot_codes, ot_tolerance, ot_max_seconds
        self.ot_points_per_cell, self.ot_method = ot_points_per_cell, ot_method
        self.k, self.angle_threshold, self.weight = k, angle_threshold, weight
        self.singular_neighbours = singular_neighbours
        self.sampler = sampler
        self.fit_ot_on_train_end = fit_ot_on_train_end
        self.autoencoder_checkpoint = autoencoder_checkpoint
        self.identity = bool(getattr(self.encoder, "identity", False))
        self.trains_networks = not (freeze_autoencoder or self.identity)
        if not self.trains_networks:
            self.encoder.requires_grad_(False)
            self.decoder.requires_grad_(False)
        self.ot: SemiDiscreteOT | None = None
        self.ot_report: FitReport | None = None
        self._autoencoder_loaded = False

    # --- the autoencoder -----------------------------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.attached_trainer
        resuming = trainer is not None and trainer.ckpt_path is not None
        if stage == "fit" and self.autoencoder_checkpoint and not resuming and not self._autoencoder_loaded:
            self.load_autoencoder(self.autoencoder_checkpoint)
        if stage == "fit" and not self.identity and not self.trains_networks and not resuming and not self._autoencoder_loaded:
            raise GenlitError(
                "AE-OT: freeze_autoencoder without autoencoder_checkpoint would fit the OT map to "
                "an untrained autoencoder's codes: give autoencoder_checkpoint (a trained AE) or "
                "drop freeze_autoencoder"
            )
        if stage == "fit" and not self.trains_networks:
            # Nothing to optimise: Lightning's notes about it say nothing about this run.
            warnings.filterwarnings("ignore", message=r".*configure_optimizers` returned `None`")
            warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")

    def load_autoencoder(self, path: str) -> None:
        """Copies the encoder, decoder and ex-post Gaussian of a trained AE or AE-OT checkpoint.

        Raises:
            GenlitError: the file is unreadable, holds no autoencoder, or was built with
                another latent size or architecture than this model's networks.
        """
        from genlit.checkpoints import read_checkpoint  # genlit.checkpoints imports the models

        state = read_checkpoint(path)["state_dict"]
        own = self.state_dict()
        wanted = [key for key in own if key.startswith(("encoder.", "decoder."))]
        missing = [key for key in wanted if key not in state]
        if missing or not any(key.startswith(("encoder.", "decoder.")) for key in state):
            raise GenlitError(
                f"autoencoder_checkpoint {path} holds no encoder/decoder of this architecture "
                f"(missing {missing[0] if missing else 'encoder.*'}): give a checkpoint of an AE "
                "or AE-OT with the same networks"
            )
        for key in wanted:
            if state[key].shape != own[key].shape:
                theirs = _their_latent_dim(own, state, self.latent_dim)
                hint = (
                    f"it was trained with latent_dim {theirs}, the config says {self.latent_dim}: "
                    f"set latent_dim: {theirs} in the encoder and decoder"
                    if theirs is not None and theirs != self.latent_dim
                    else "build the encoder and decoder as that run did"
                )
                raise GenlitError(
                    f"autoencoder_checkpoint {path} does not fit this model ({key} is "
                    f"{tuple(state[key].shape)}, here {tuple(own[key].shape)}): {hint}"
                )
        extra = ["latent_mean", "latent_cov", "latent_count"]
        self.load_state_dict({k: state[k] for k in wanted + [e for e in extra if e in state]}, strict=False)
        self._autoencoder_loaded = True

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self.trains_networks:
            return super().training_step(batch, batch_idx)
        with torch.no_grad():
            self._accumulate(self.encoder(self.unpack(batch)))
        return None  # nothing to optimise: the batches only feed the ex-post fit

    def configure_optimizers(self) -> Any:
        return super().configure_optimizers() if self.trains_networks else None

    # --- the OT map ----------------------------------------------------------------------

    def on_training_complete(self) -> None:
        super().on_training_complete()  # the ex-post Gaussian, on the final weights
        trainer = self.attached_trainer
        if self.fit_ot_on_train_end and trainer is not None and trainer.train_dataloader is not None:
            streams = random_state.capture()  # a new pass over the loader draws a shuffle order
            try:
                with full_pass(trainer):
                    self.fit_ot(trainer.train_dataloader)
            finally:
                random_state.restore(streams)

    @torch.no_grad()
    def collect_codes(self, batches: Iterable[Any], n: int) -> Tensor:
        """The encoder's codes (eval mode) of the first ``n`` training samples ``batches`` gives.

        Where the batches carry each image's position (``(images, labels, positions)``), the
        positions of the codes are kept in ``self.collected_positions`` (else it is None).
        """
        codes, positions, have = [], [], 0
        with self._evaluating():
            for batch in batches:
                batch = self.prepare_batch(batch)
                z = self.encoder(self.unpack(batch))
                codes.append(z[: n - have])
                if isinstance(batch, (list, tuple)) and len(batch) >= 3 and torch.is_tensor(batch[2]):
                    positions.append(batch[2][: n - have].long())
                have += len(codes[-1])
                if have >= n:
                    break
        if not codes:
            raise GenlitError("AE-OT: the training data gave no codes to fit the OT map to")
        self.collected_positions = torch.cat(positions) if len(positions) == len(codes) else None
        return torch.cat(codes)

    def fit_ot(self, batches: Iterable[Any]) -> FitReport:
        """Fits the OT map to the codes of ``batches`` (at most ``ot_codes`` of them).

        Under DDP every rank encodes its own share, the codes are gathered, rank 0 fits and
        the heights are broadcast, so every rank holds the same map.

        Raises:
            GenlitError: the autoencoder was never trained (nor loaded), or the codes are
                fewer than 2 or not finite.
        """
        if self.trains_networks and self.generator_steps_done == 0 and not self._autoencoder_loaded:
            raise GenlitError(
                "AE-OT: the OT map is fitted to a trained autoencoder's codes, and this one has "
                "made no training step: give the fit a budget (max_epochs or max_steps), or "
                "autoencoder_checkpoint to start from a trained AE"
            )
        world = torch.distributed.get_world_size() if distributed() else 1
        codes = self.collect_codes(batches, math.ceil(self.ot_codes / world))
        if world > 1:
            count = torch.tensor([len(codes)], device=codes.device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
            parts = [torch.empty_like(codes[: int(count)]) for _ in range(world)]
            torch.distributed.all_gather(parts, codes[: int(count)].contiguous())
            codes = torch.cat(parts)[: self.ot_codes]
            if self.collected_positions is not None:
                mine = self.collected_positions[: int(count)].contiguous()
                gathered = [torch.empty_like(mine) for _ in range(world)]
                torch.distributed.all_gather(gathered, mine)
                self.collected_positions = torch.cat(gathered)[: self.ot_codes]
        ot = SemiDiscreteOT(codes.float(), chunk=4096)
        report = self._run_fit(ot) if not distributed() or torch.distributed.get_rank() == 0 else None
        if world > 1:
            torch.distributed.broadcast(ot.heights, 0)
            box = [report]
            torch.distributed.broadcast_object_list(box, 0)
            report = box[0]
        self.ot, self.ot_report = ot, report
        self.ot_positions = None if self.collected_positions is None else self.collected_positions.cpu()
        self._log_fit(report, len(codes))
        return report

    def _run_fit(self, ot: SemiDiscreteOT) -> FitReport:
        bar = None
        trainer = self.attached_trainer
        shown = trainer is None or (trainer.progress_bar_callback is not None and sys.stderr.isatty())
        if shown:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"OT map ({ot.num_points:,} codes)", unit="it", leave=False, dynamic_ncols=True)

        def progress(iteration: int, tv: float, points: int) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(tv=f"{tv:.4f}", points=f"{points:,}", refresh=False)

        try:
            return ot.fit(
                tolerance=self.ot_tolerance,
                method=self.ot_method,
                max_seconds=self.ot_max_seconds,
                points_per_cell=self.ot_points_per_cell,
                progress=progress,
            )
        finally:
            if bar is not None:
                bar.close()

    def _log_fit(self, report: FitReport, n: int) -> None:
        from genlit.callbacks import progress

        trainer = self.attached_trainer
        if report.converged:
            stop = "converged on held-out points"
        elif report.seconds >= self.ot_max_seconds:
            stop = f"stopped at the {self.ot_max_seconds:.0f} s limit, not converged"
        else:
            stop = "stopped at its point or iteration limit, not converged"
        stats = self.generation_stats()
        line = (
            f"OT map: {n:,} codes, {report.iterations} iterations in {report.seconds:.1f} s ({report.method}), "
            f"{stop}: total variation {report.held_out_tv:.4f} held out (measured {report.held_out_raw_tv:.4f} "
            f"on {report.held_out_points:,} new points, their noise "
            f"{report.held_out_noise:.4f}), {report.total_variation:.4f} on its {report.monte_carlo_points:,} "
            f"fitting points; singular facets: {stats.rejected_share:.1%} of samples next to one, "
            f"{stats.kept_share:.1%} kept a training code"
        )
        metrics = {
            "ot/codes": float(n), "ot/iterations": float(report.iterations), "ot/seconds": report.seconds,
            "ot/total_variation": report.total_variation, "ot/held_out_tv": report.held_out_tv,
            "ot/held_out_raw_tv": report.held_out_raw_tv, "ot/held_out_noise": report.held_out_noise,
            "ot/held_out_error": report.held_out_error, "ot/converged": float(report.converged),
            "ot/rejected_share": stats.rejected_share, "ot/kept_share": stats.kept_share,
        }
        if trainer is None:
            print(line, file=sys.stderr)
            return
        progress.write(trainer, line)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                try:
                    logger.log_metrics(metrics, step=self.generator_steps_done)
                except Exception as err:  # noqa: BLE001 - a tracker never ends a run
                    warnings.warn(f"could not log the OT fit to {type(logger).__name__}: {err}", stacklevel=2)

    def generation_stats(self, n: int = 10_000) -> GenerationStats:
        """How the map's generation treats singular facets, on ``n`` samples of its own seed
        (the training random streams are untouched)."""
        assert self.ot is not None
        self.ot.generate(n, self.k, self.angle_threshold, self.weight, generator=torch.Generator().manual_seed(0),
                         singular_neighbours=self.singular_neighbours)
        return self.ot.last_generation

    def prior_codes(self, n: int) -> Tensor:
        """Codes from the OT map (the ex-post Gaussian before it is fitted, or with ``sampler: gaussian``)."""
        if self.ot is None or self.sampler == "gaussian":
            return super().prior_codes(n)
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), device=self.device).item()))
        codes = self.ot.generate(n, self.k, self.angle_threshold, self.weight, generator=generator,
                                 singular_neighbours=self.singular_neighbours)
        return codes.to(self.device, self.latent_mean.dtype)
