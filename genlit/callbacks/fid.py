"""FID and KID of model samples against a datamodule's real images, during training."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from genlit.callbacks import progress
from genlit.callbacks._rng import seeded
from genlit.callbacks.schedule import (
    Evaluation,
    EvaluationSchedule,
    StagedEvaluation,
    generator_step,
    log_evaluation,
)
from genlit.errors import GenlitError
from genlit.metrics.features import (
    INCEPTION_WEIGHTS_FILE,
    FeatureExtractor,
    inception_weights_folder,
    load_features,
)
from genlit.metrics.fid import (
    FeatureDistances,
    InceptionScoreSide,
    Tee,
    default_cache_dir,
    generate_into,
    reference_statistics,
    share,
)


class FID(StagedEvaluation):
    """Logs ``val/fid``, ``val/kid_mean`` and ``val/kid_std`` of ``model.sample`` every few epochs.

    The real side is computed once per (dataset, split, image size, feature network) and
    cached on disk; each evaluation only draws ``num_samples`` new images (from the same seeded
    noise every time, leaving the training RNG untouched), split across DDP ranks, and
    torchmetrics sums the ranks' statistics. ``val/fid_num_samples`` is logged with the value,
    the feature network and split go to the loggers' hyperparameters (``fid/*``), and a line
    per evaluation says all three, so numbers of different settings are not compared by
    accident. Only ``pl_module.sample(n)`` is used, images ``(N, C, H, W)`` in [-1, 1].

    When it runs during ``fit``: at the end of every ``every_n_epochs``-th validation (so set
    ``trainer.check_val_every_n_epoch`` and ``every_n_epochs`` together, and give a
    ``ModelCheckpoint(monitor="val/fid")`` the same ``every_n_epochs``; without a validation
    split, ``val_fraction: 0``, at the end of every ``every_n_epochs``-th training epoch), after
    every ``every_n_steps``-th generator step, and always once on the final weights, so every
    finished run reports its final FID. Also at every ``validate``, and at ``test`` (logged as
    ``test/fid``). Not under ``fast_dev_run``.

    Args:
        features: ``inception`` (comparable with published FIDs), ``digits``, ``mnist``,
            ``fashion_mnist`` (genlit's small classifiers: fast and offline, comparable only
            among themselves) or the import path of an ``nn.Module``; see
            :mod:`genlit.metrics.features`.
        num_samples: Generated images per evaluation, over all ranks; capped, with a warning,
            at the number of real images. ``None``: as many as there are real images.
        every_n_epochs: Evaluate at every n-th epoch (``None``: by steps and at the end only).
        every_n_steps: Also evaluate after every n-th generator step.
        split: The real images: ``test`` (default), ``val`` or ``train``.
        kid: Also log KID (mean and standard deviation over random subsets).
        kid_subsets: KID's number of subsets.
        kid_subset_size: KID's subset size, capped at the number of samples.
        batch_size: Images per ``sample`` call.
        weights_path: Local weights of the feature network (Inception offline: a copy of
            ``weights-inception-2015-12-05-6726825d.pth``).
        cache_dir: Folder of cached reference statistics; default ``~/.cache/genlit/fid`` or
            ``$GENLIT_CACHE_DIR/fid``.
        seed: Seed of the generated samples (rank r uses ``seed + r``) and of KID's subsets.
        precision_recall: Also log ``val/precision``, ``val/recall``, ``val/density`` and
            ``val/coverage`` of the same samples in the same features (k-NN manifolds,
            Kynkaanniemi et al. 2019, Naeem et al. 2020; :mod:`genlit.metrics.manifold`).
            Keeps the real features in memory, as KID does.
        nearest_k: Their k (5, as Naeem et al. recommend for 10,000 samples).
        inception_score: Also log ``val/is_mean`` and ``val/is_std``, torchmetrics' Inception
            Score of the same samples (Salimans et al. 2016). Needs the Inception weights
            (``weights_path`` offline, with ``features: inception``; else the torch hub
            folder); refused in one line at setup when they cannot be had.
        copying: When to also log the data-copying figures of the same samples in the same
            features (:mod:`genlit.metrics.copying`): ``val/c_t`` (Meehan et al.'s C_T: well
            below 0 copying, near 0 generalising, above 0 underfitting), ``val/nn_ratio`` (median
            distance of a sample to its nearest training image over the held-out images'),
            ``val/closer_share``, ``val/memorization`` and ``val/mifid`` (Bai et al.), and
            ``val/member_share`` for models that hold state per training image. ``final``
            (default): at the final evaluation of a fit, and at every ``validate`` and ``test``;
            ``every``: at every evaluation; ``off``: never. The training split's features are
            computed once and cached like the reference; the held-out images are the FID's
            split (the test split when the FID's split is ``train``). Where they cannot be
            had (no held-out split, too few images), one warning says why and the FID is
            logged without them.
        copying_cells: C_T's k-means cells; ``None``: about 200 samples per cell, at most 50.
    """

    def __init__(
        self,
        features: str = "inception",
        num_samples: int | None = 10000,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        split: Literal["train", "val", "test"] = "test",
        kid: bool = True,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        batch_size: int = 500,
        weights_path: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        precision_recall: bool = False,
        nearest_k: int = 5,
        inception_score: bool = False,
        copying: Literal["final", "every", "off"] = "final",
        copying_cells: int | None = None,
    ) -> None:
        if nearest_k < 1:
            raise ValueError(f"FID needs nearest_k >= 1, got {nearest_k}")
        if num_samples is not None and num_samples < 2:
            raise ValueError(f"FID needs num_samples >= 2, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"FID needs batch_size >= 1, got {batch_size}")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if copying not in ("final", "every", "off"):
            raise ValueError(f"copying must be final, every or off, got {copying!r}")
        if copying_cells is not None and copying_cells < 1:
            raise ValueError(f"copying_cells must be >= 1 or null, got {copying_cells}")
        if copying_cells is not None and num_samples is not None and num_samples < copying_cells:
            raise ValueError(
                f"FID: num_samples={num_samples} cannot fill copying_cells={copying_cells} "
                "k-means cells: raise num_samples or lower copying_cells"
            )
        self.features = features
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.schedule = EvaluationSchedule(every_n_epochs, every_n_steps)
        self.split = split
        self.kid = kid
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.weights_path = weights_path
        self.cache_dir = cache_dir
        self.seed = seed
        self.precision_recall = precision_recall
        self.nearest_k = nearest_k
        self.inception_score = inception_score
        self.copying = copying
        self.copying_cells = copying_cells
        self._copying_state: Literal["unset", "ready", "failed"] = "unset"
        self.scorer: InceptionScoreSide | None = None
        self.distances: FeatureDistances | None = None
        self.last: dict[str, float] = {}
        self.network: FeatureExtractor | None = None
        """The feature network, loaded at setup."""
        self.last_evaluation: Evaluation | None = None
        self._announced = False
        self._warned_cap = False

    # --- when ----------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Finds now, before the first step, what the first evaluation would fail on: the
        feature network's weights (downloaded now where they may be) and a cache folder that
        cannot be written."""
        from genlit.sample import check_writable

        if self.network is None:
            if (
                self.features == "inception"
                and self.weights_path is None
                and not (inception_weights_folder() / INCEPTION_WEIGHTS_FILE).is_file()
            ):
                rank_zero_info(f"FID: fetching the Inception weights into {inception_weights_folder()}")
            self.network = load_features(self.features, self.weights_path)
        if self.inception_score and self.scorer is None:
            weights = self.weights_path if self.features == "inception" else None
            try:
                self.scorer = InceptionScoreSide(weights)
            except GenlitError as err:
                raise GenlitError(f"FID inception_score: {err}") from None
        folder = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        check_writable(folder, folder=True, flag="FID cache_dir")

    # --- what ----------------------------------------------------------------------------

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> FeatureDistances:
        """Loads the feature network and the reference statistics (computing them once)."""
        if self.distances is not None:
            return self.distances
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise GenlitError("the FID callback needs a datamodule to read the real images from")
        device = pl_module.device
        if self.network is None:  # measured outside a trainer's setup
            self.network = load_features(self.features, self.weights_path)
        network: FeatureExtractor = self.network.to(device)
        shape = None
        if getattr(datamodule, "channels", None) and getattr(datamodule, "image_size", None):
            shape = (datamodule.channels, datamodule.image_size, datamodule.image_size)
        distances = FeatureDistances(
            network, shape, self.kid, self.kid_subsets, self.kid_subset_size, self.seed,
            precision_recall=self.precision_recall, nearest_k=self.nearest_k,
            copying=self.copying != "off", copying_cells=self.copying_cells,
        ).to(device)  # fmt: skip
        # Rank 0 computes a missing cache file first; the others then read it.
        if trainer.is_global_zero:
            stats = reference_statistics(datamodule, self.split, distances, self.cache_dir, device)
        trainer.strategy.barrier("genlit_fid_reference")
        if not trainer.is_global_zero:
            stats = reference_statistics(datamodule, self.split, distances, self.cache_dir, device)
        distances.set_reference(stats, hold=trainer.is_global_zero)
        self.distances = distances
        return distances

    def _is_final(self, trainer: Trainer) -> bool:
        """Whether this evaluation is a fit's final one (or one outside fit)."""
        from genlit.callbacks.schedule import epoch_budget_spent, step_budget_spent

        if trainer.state.fn != "fit":
            return True
        return step_budget_spent(trainer) or epoch_budget_spent(trainer)

    def _wants_copying(self, trainer: Trainer) -> bool:
        return self.copying == "every" or (self.copying == "final" and self._is_final(trainer))

    def prepare_copying(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Gives the metric its training and held-out features (computed once, cached);
        ``False``, after one warning, where they cannot be had."""
        if self._copying_state != "unset":
            return self._copying_state == "ready"
        from genlit.metrics.copying import copying_sides

        distances, datamodule = self.distances, trainer.datamodule
        device = pl_module.device

        def load(split: str):
            if trainer.is_global_zero:
                stats = reference_statistics(datamodule, split, distances, self.cache_dir, device)
            trainer.strategy.barrier(f"genlit_copying_{split}")
            if not trainer.is_global_zero:
                stats = reference_statistics(datamodule, split, distances, self.cache_dir, device)
            return stats

        try:
            sides = copying_sides(datamodule, self.split, distances.reference, load, pl_module)
        except GenlitError as err:
            self._copying_state = "failed"
            rank_zero_warn(f"FID: no data-copying figures: {err}")
            return False
        distances.set_copying(*sides)
        self._copying_state = "ready"
        return True

    def total_samples(self, num_real: int) -> int:
        """``num_samples``, capped at the number of real images."""
        if self.num_samples is None:
            return num_real
        if self.num_samples > num_real:
            if not self._warned_cap:
                self._warned_cap = True
                rank_zero_warn(
                    f"FID: num_samples={self.num_samples} is more than the {num_real} real "
                    f"images of the {self.split} split; using {num_real}"
                )
            return num_real
        return self.num_samples

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Draws the samples and returns ``{"fid", "kid_mean", "kid_std", "num_samples"}`` (and
        ``precision``, ``recall``, ``density``, ``coverage``); logs nothing."""
        # Validation runs under inference mode; the metric states must stay normal tensors.
        with torch.inference_mode(False), torch.no_grad():
            distances = self.prepare(trainer, pl_module)
            n = self.total_samples(distances.reference.num_samples)
            distances.copying_enabled = self._wants_copying(trainer) and self.prepare_copying(
                trainer, pl_module
            )
            rank, world = trainer.global_rank, trainer.world_size
            with seeded(pl_module.device, self.seed + rank):
                scorer = self.scorer.to(pl_module.device) if self.scorer is not None else None
                generate_into(Tee(distances, scorer), pl_module.sample, share(n, world, rank), self.batch_size)
            values = distances.compute()
            distances.reset()
            if scorer is not None:
                values.update(scorer.compute())
                scorer.reset()
        self.last = dict(values, num_samples=n)
        return self.last

    def evaluate(
        self, trainer: Trainer, pl_module: LightningModule, stage: str = "val", in_training: bool = False
    ) -> dict[str, float]:
        """Measures, then logs ``{stage}/fid``, ``{stage}/kid_mean``, ... and one line of settings.

        Args:
            trainer: The trainer.
            pl_module: The model.
            stage: ``val`` or ``test``: the key prefix.
            in_training: Called from a training hook, whose values Lightning writes to the
                loggers only on its logging steps: they are written directly instead.
        """
        if trainer.state.fn == "fit":
            self.schedule.mark(trainer)
        values = dict(self.measure(trainer, pl_module))
        n = int(values.pop("num_samples"))
        if not self._announced:
            self._announce(trainer, n)
        logged = {f"{stage}/{key}": value for key, value in values.items()}
        logged[f"{stage}/fid_num_samples"] = float(n)
        self.last_evaluation = log_evaluation(
            trainer, pl_module, logged, in_training, prog_bar=(f"{stage}/fid",)
        )
        extra = (
            f", KID {values['kid_mean']:.4g} ± {values['kid_std']:.2g}"
            if "kid_mean" in values
            else ""
        )
        if "is_mean" in values:
            extra += f", IS {values['is_mean']:.4g} ± {values['is_std']:.2g}"
        if "precision" in values:
            extra += ", precision {precision:.3f}, recall {recall:.3f}, density {density:.3f}, coverage {coverage:.3f}".format(**values)
        if "c_t" in values:
            from genlit.metrics.copying import describe

            extra += f"; copying: {describe(values)}"
        if "c_t" in values and trainer.is_global_zero and not trainer.fast_dev_run:
            self.draw_neighbours(trainer, pl_module)
        progress.write(  # above the progress bar
            trainer,
            f"{stage}/fid {values['fid']:.4g}{extra} (generator step {generator_step(trainer, pl_module)}; {n} samples vs "
            f"{self.distances.reference.describe()}; features {self.distances.network.name})"
        )
        return self.last

    def draw_neighbours(self, trainer: Trainer, pl_module: LightningModule, count: int = 16) -> Path | None:
        """Saves ``count`` samples above their nearest training images (rank 0 only); a
        failure is a warning, never the end of the run."""
        from genlit.callbacks.grid import save_neighbours
        from genlit.callbacks.images import run_dir, send_image
        from genlit.metrics.copying import training_images
        from genlit.metrics.fid import to_uint8

        step = generator_step(trainer, pl_module)
        try:
            with torch.inference_mode(False), torch.no_grad(), seeded(pl_module.device, self.seed):
                images = to_uint8(pl_module.sample(count))
                rows, ratios = self.distances.copying.nearest_training(self.distances.features(images))
            neighbours = training_images(trainer.datamodule, rows)
            path = run_dir(trainer) / "samples" / f"nearest_neighbours_step_{step:06d}.png"
            title = [
                type(pl_module).__name__, f"generator step {step}",
                f"samples above their nearest training images in {self.distances.network.name} features",
            ]  # fmt: skip
            save_neighbours(images.cpu(), neighbours, ratios.cpu(), path, title)
        except Exception as err:  # noqa: BLE001 - a picture never ends a run
            rank_zero_warn(f"FID: could not draw the nearest training images: {err}")
            return None
        send_image(trainer, "val/nearest_neighbours", path)
        return path

    def _announce(self, trainer: Trainer, n: int) -> None:
        """Puts the settings next to the values in every logger's hyperparameters, once."""
        self._announced = True
        reference = self.distances.reference
        settings = {
            "fid/features": self.distances.network.describe(),
            "fid/num_samples": n,
            "fid/split": self.split,
            "fid/reference": reference.describe(),
            "fid/reference_file": str(reference.path) if reference.path else "",
        }
        for logger in trainer.loggers:
            try:
                logger.log_hyperparams(settings)
            except Exception as err:  # noqa: BLE001 - the tracker must never end a run
                rank_zero_warn(f"FID: could not log the settings to {type(logger).__name__}: {err}")

    @property
    def reference_file(self) -> Path | None:
        """The cache file of the reference statistics, once loaded."""
        if self.distances is None or self.distances.reference is None:
            return None
        return self.distances.reference.path
