"""FID and KID against reference statistics computed once and cached on disk.

The metrics are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``;
genlit adds what a training run needs around them:

* one feature pass per batch shared by both metrics (:class:`FeatureDistances`);
* the real side computed once per (dataset, split, image size, feature network, listing of
  the dataset's files) and cached under ``~/.cache/genlit/fid`` (``$GENLIT_CACHE_DIR/fid``, or
  any folder given), in a file whose name hashes all of these, so a change of any of them
  misses the cache (:func:`reference_statistics`); between evaluations only the generated
  side is reset;
* the same path to the features for real and generated images: :func:`to_uint8` rounds
  [-1, 1] to the nearest of 256 levels (not truncation), then the network resizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat

from genlit._compat import kid_fake_features, set_fid_real_statistics
from genlit.batches import batch_data
from genlit.errors import GenlitError
from genlit.metrics.features import FeatureExtractor

__all__ = [
    "FeatureDistances",
    "ReferenceStats",
    "default_cache_dir",
    "files_fingerprint",
    "generate_into",
    "in_order",
    "real_batches",
    "real_positions",
    "reference_key",
    "reference_path",
    "reference_statistics",
    "share",
    "to_uint8",
]

_CACHE_VERSION = 1
# Datamodule arguments that change how images are loaded, not which images: left out of the key.
_LOADER_ONLY = {"batch_size", "num_workers", "in_memory", "download", "pin_memory", "indices"}
# Attributes of genlit's image datamodules that pick the images, whatever the hparams recorded.
_CONTENT_ATTRIBUTES = {"root", "test_root", "image_size", "channels", "val_fraction", "seed"}


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] to uint8 in [0, 255], rounded to the nearest level (not truncated).

    The inverse of the datamodules' ``-1 + x / 127.5``, so real images come back bit-exact.
    """
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def default_cache_dir() -> Path:
    """``$GENLIT_CACHE_DIR/fid`` when set, else ``$XDG_CACHE_HOME/genlit/fid`` (``~/.cache/genlit/fid``)."""
    root = os.environ.get("GENLIT_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "fid"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "genlit" / "fid"


def share(n: int, world_size: int, rank: int) -> int:
    """This rank's part of ``n`` samples split over ``world_size`` ranks (the parts sum to ``n``)."""
    return n // world_size + (1 if rank < n % world_size else 0)


# --- reference statistics ----------------------------------------------------------------------


@dataclass
class ReferenceStats:
    """The real side of FID and KID: feature sums (for FID) and the features (for KID).

    Attributes:
        key: What the statistics describe: dataset, split, image shape, feature network.
        features_sum: Sum of the features, float64 ``(d,)``.
        cov_sum: Sum of the outer products ``f f^T``, float64 ``(d, d)``.
        num_samples: Number of real images.
        image_shape: ``(C, H, W)`` of the real images.
        features: All features, float32 ``(N, d)``, kept for KID; ``None`` without KID.
        path: The cache file, once saved or loaded.
    """

    key: dict[str, Any]
    features_sum: Tensor
    cov_sum: Tensor
    num_samples: int
    image_shape: tuple[int, int, int]
    features: Tensor | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def mean(self) -> Tensor:
        return self.features_sum / self.num_samples

    @property
    def cov(self) -> Tensor:
        """Unbiased sample covariance, as torchmetrics computes it."""
        mean = self.mean[None]  # (1, d)
        return (self.cov_sum - self.num_samples * mean.T @ mean) / (self.num_samples - 1)

    def describe(self) -> str:
        """E.g. ``MNIST test split, 10000 images of 1x28x28``."""
        shape = "x".join(map(str, self.image_shape))
        dataset = str(self.key.get("dataset", "images")).rsplit(".", 1)[-1]
        return f"{dataset} {self.key.get('split', '?')} split, {self.num_samples} images of {shape}"

    @classmethod
    def from_features(
        cls,
        features: Tensor,
        key: dict[str, Any],
        image_shape: tuple[int, int, int],
        keep: bool = True,
    ) -> ReferenceStats:
        """The statistics of real features ``(N, d)`` computed elsewhere."""
        f = features.detach().double().cpu()  # (N, d)
        kept = features.detach().float().cpu() if keep else None
        return cls(key, f.sum(dim=0), f.T @ f, len(f), tuple(image_shape), kept)

    def save(self, path: Path) -> None:
        """Writes the statistics atomically (a partial file never looks like a cache hit)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(
            {
                "key": self.key,
                "features_sum": self.features_sum.cpu(),
                "cov_sum": self.cov_sum.cpu(),
                "num_samples": self.num_samples,
                "image_shape": list(self.image_shape),
                "features": None if self.features is None else self.features.cpu(),
            },
            tmp,
        )
        os.replace(tmp, path)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> ReferenceStats:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return cls(
            key=saved["key"],
            features_sum=saved["features_sum"],
            cov_sum=saved["cov_sum"],
            num_samples=int(saved["num_samples"]),
            image_shape=tuple(saved["image_shape"]),
            features=saved["features"],
            path=path,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _listing(folder: Path) -> list[str]:
    """``path NUL size NUL mtime NUL ctime`` of every file below ``folder``, unsorted.

    Links are followed (as torchvision's walk follows them), but a folder seen before (a loop)
    is not entered again; a broken link, and a folder that cannot be listed (which
    torchvision's walk skips), are listed without a stat. NUL separates the fields: no file
    name holds one.
    """
    top = folder.stat()
    seen = {(top.st_dev, top.st_ino)}
    pending, lines = [("", str(folder))], []
    while pending:
        prefix, current = pending.pop()
        try:
            entries = os.scandir(current)
        except OSError:
            lines.append(f"{prefix}\0-")
            continue
        with entries:
            for entry in entries:
                try:
                    stat = entry.stat()
                except OSError:
                    lines.append(f"{prefix}{entry.name}\0-")
                    continue
                if entry.is_dir():
                    if (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        pending.append((f"{prefix}{entry.name}/", entry.path))
                else:
                    times = f"{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
                    lines.append(f"{prefix}{entry.name}\0{times}")
    return lines


def files_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """What the cache key knows of a file or folder's contents; ``None`` if it does not exist.

    A hash of the sorted relative paths of every file below ``path`` with their sizes,
    modification and status-change times in nanoseconds, from one ``os.scandir`` walk that
    reads no file's contents (a second or two per 100,000 files). The change time catches a
    file rewritten with its size and mtime kept; a change that keeps all three (where the
    file system's clock is too coarse, or reports creation time as st_ctime) goes unseen.
    """
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        lines = sorted(_listing(path))
    elif path.exists():
        stat = path.stat()
        lines = [f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"]
    else:
        return None
    text = "\n".join(lines).encode("utf-8", "surrogateescape")
    return {"path": str(path), "files": len(lines), "sha256": hashlib.sha256(text).hexdigest()}


def _reference_files(datamodule: Any, split: str, args: dict[str, Any]) -> list[Path]:
    """The files and folders the split's images are read from.

    The datamodule's ``split_files(split)`` where it has one (genlit's do); otherwise every
    folder named by a ``*root`` argument, all of whose files then count.
    """
    split_files = getattr(datamodule, "split_files", None)
    if callable(split_files):
        return [Path(p) for p in split_files(split)]
    return [Path(v) for k, v in args.items() if k.endswith("root") and isinstance(v, str)]


def reference_key(datamodule: Any, split: str, network: FeatureExtractor) -> dict[str, Any]:
    """Everything the reference statistics depend on; the cache file name hashes it.

    The dataset is the datamodule's class and every init argument that picks images (paths,
    resolved; the image size; the validation fraction and seed), read from the datamodule
    itself where it has them, so a datamodule built by ``genlit fit`` and one built in Python
    share the file; its contents are the :func:`files_fingerprint` of each file or folder the
    split is read from (``contents``, left out when none of them exists yet: a dataset that
    is still to be downloaded); the network is its name and a hash of its weights.
    """
    cls = type(datamodule)
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    names = {k for k in hparams if not k.startswith("_")} | _CONTENT_ATTRIBUTES
    args = {}
    for name in sorted(names - _LOADER_ONLY):
        value = getattr(datamodule, name, None)
        if value is None or callable(value):
            value = hparams.get(name)
        if value is None or value == "":
            continue
        if name.endswith("root") and isinstance(value, (str, Path)):
            value = str(Path(value).expanduser().resolve())
        args[name] = _jsonable(value)
    channels, size = getattr(datamodule, "channels", None), getattr(datamodule, "image_size", None)
    key = {
        "version": _CACHE_VERSION,
        "dataset": f"{cls.__module__}.{cls.__qualname__}",
        "data_args": args,
        "split": split,
        "image_shape": [channels, size, size] if channels and size else None,
        "features": network.name,
        "features_fingerprint": network.fingerprint(),
    }
    contents = [files_fingerprint(p) for p in _reference_files(datamodule, split, args)]
    if any(contents):
        key["contents"] = [c for c in contents if c is not None]
    return key


def reference_path(key: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """The cache file of ``key``: readable prefix, then a hash of the whole key."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    dataset = str(key.get("dataset", "data")).rsplit(".", 1)[-1]
    shape = key.get("image_shape")
    size = f"{shape[-1]}px-" if shape else ""
    features = str(key.get("features", "features")).rsplit(".", 1)[-1]
    return folder / f"{dataset}-{key.get('split')}-{size}{features}-{digest[:16]}.pt"


def in_order(loader: Any) -> Any:
    """The same batches without shuffling or a dropped last batch (a training loader's habits)."""
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return loader
    if not loader.drop_last and not isinstance(loader.sampler, RandomSampler):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


_STAGES = {"train": "fit", "val": "validate", "test": "test"}


def _split_batches(datamodule: Any, split: str, device: torch.device | str) -> Iterator[Any]:
    """The batches of ``datamodule``'s split in order, through the Trainer's transfer hooks."""
    if split not in _STAGES:
        raise GenlitError(f"reference split must be one of train, val, test; got {split!r}")
    datamodule.setup(_STAGES[split])
    loader = in_order(getattr(datamodule, f"{split}_dataloader")())
    if isinstance(loader, (list, tuple)):
        if not loader:
            raise GenlitError(
                f"{type(datamodule).__name__} has no {split} split (is val_fraction 0?): "
                "choose another reference split (split=test or split=train)"
            )
        loader = loader[0]
    device = torch.device(device)
    # A DataLoader draws its base seed from the global RNG when its iterator is made: the
    # draw happens on a forked stream, so reading real images mid-training changes nothing.
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader)
    for batch in batches:
        batch = datamodule.on_before_batch_transfer(batch, 0)
        batch = datamodule.transfer_batch_to_device(batch, device, 0)
        yield datamodule.on_after_batch_transfer(batch, 0)


def real_batches(
    datamodule: Any, split: str, device: torch.device | str = "cpu"
) -> Iterator[Tensor]:
    """The real images of ``datamodule``'s split as uint8 batches ``(B, C, H, W)`` on ``device``.

    Sets the split up, then runs each batch through the datamodule's transfer hooks as the
    Trainer does (the in-memory datamodules gather their index batches there).

    Raises:
        GenlitError: unknown split or an empty one.
    """
    for batch in _split_batches(datamodule, split, device):
        yield to_uint8(batch_data(batch))


def _batch_element(datamodule: Any, split: str, position: int, missing: str) -> Tensor:
    """Element ``position`` of every batch of ``datamodule``'s split, as int64 ``(N,)`` in order;
    ``missing`` completes the error when the batches lack it."""
    parts = []
    for batch in _split_batches(datamodule, split, "cpu"):
        if not isinstance(batch, (list, tuple)) or len(batch) <= position or not torch.is_tensor(batch[position]):
            raise GenlitError(f"the {split} batches of {type(datamodule).__name__} carry no {missing}")
        parts.append(batch[position].long().cpu())
    return torch.cat(parts)


def real_labels(datamodule: Any, split: str) -> Tensor:
    """The labels of ``datamodule``'s split, int64 ``(N,)``, in order.

    Raises:
        GenlitError: the batches carry no labels (``(images, labels)`` is expected).
    """
    return _batch_element(
        datamodule, split, 1, "labels: class coverage needs (images, labels) batches, or reference=uniform"
    )


def real_positions(datamodule: Any, split: str) -> Tensor:
    """The positions of ``datamodule``'s split images, int64 ``(N,)``, in the order of
    :func:`real_batches` (the third element of genlit's batches with ``indices: true``).

    Raises:
        GenlitError: the batches carry no positions.
    """
    return _batch_element(
        datamodule, split, 2, "image positions: the member test needs them (data.init_args.indices: true)"
    )


def reference_statistics(
    datamodule: Any,
    split: str,
    distances: FeatureDistances,
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> ReferenceStats:
    """The real side for ``distances``: read from the cache, or computed once and cached.

    Args:
        datamodule: Gives the real images (only read on a cache miss).
        split: ``train``, ``val`` or ``test``.
        distances: Holds the feature network; also says whether KID's features are kept.
        cache_dir: Folder of the cache files; :func:`default_cache_dir` by default.
        device: Where the features of a cache miss are computed.
    """
    key = reference_key(datamodule, split, distances.network)
    path = reference_path(key, cache_dir)
    if path.is_file():
        try:
            stats = ReferenceStats.load(path)
        except Exception:  # noqa: BLE001 - an unreadable cache file is a cache miss
            stats = None
        if stats is not None and stats.key == key:
            if stats.features is not None or not distances.keeps_features:
                return stats
    stats = distances.measure(real_batches(datamodule, split, device), key)
    if stats.num_samples < 2:
        raise GenlitError(
            f"the {split} split of {type(datamodule).__name__} has fewer than 2 images"
        )
    stats.save(path)
    return stats


# --- the metrics -------------------------------------------------------------------------------


class _Precomputed(nn.Module):
    """The metrics' "feature network": the features are computed once, outside, for both."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class _ReferenceKID(KernelInceptionDistance):
    """torchmetrics' KID with the real features fixed and identical on every rank.

    Only the generated features are a synced state: kept as a state, the real ones would be
    gathered once per rank and counted ``world_size`` times. The real subsets come from their
    own seeded generator, so their kernel sums are computed at the first evaluation and reused.
    The value is torchmetrics' unbiased MMD^2 with the polynomial kernel; the products run in
    the features' precision, the kernel and the sums in float64.
    """

    def __init__(self, reference: Tensor, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(reset_real_features=False, **kwargs)
        self.register_buffer("reference", reference, persistent=False)
        self.seed = seed
        self._real_terms: tuple[int, list[Tensor], Tensor] | None = None

    def _kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """``(gamma a b^T + coef)^degree``, in a's precision, in two operations.

        Few large operations, not many small ones: on a busy CPU each parallel operation can
        wait a scheduler slice for its threads.
        """
        gamma = self.gamma if self.gamma is not None else 1.0 / a.shape[1]
        coef = torch.full((1, 1), self.coef, dtype=a.dtype, device=a.device)
        return torch.addmm(coef, a, b.T, alpha=gamma).pow_(self.degree)  # (len(a), len(b))

    @staticmethod
    def _off_diagonal_sum(kernel: Tensor) -> Tensor:
        return kernel.sum(dtype=torch.float64) - kernel.diagonal().sum(dtype=torch.float64)

    def _real_subsets(self, m: int) -> tuple[list[Tensor], Tensor]:
        """Index sets of the real subsets and their within-subset kernel sums, for size m."""
        if self._real_terms is None or self._real_terms[0] != m:
            rng = torch.Generator().manual_seed(self.seed)
            n, device = len(self.reference), self.reference.device
            subsets = [torch.randperm(n, generator=rng)[:m].to(device) for _ in range(self.subsets)]
            sums = torch.stack(
                [
                    self._off_diagonal_sum(self._kernel(self.reference[i], self.reference[i]))
                    for i in subsets
                ]
            )
            self._real_terms = (m, subsets, sums)
        return self._real_terms[1], self._real_terms[2]

    def compute(self) -> tuple[Tensor, Tensor]:
        real = self.reference
        fake = kid_fake_features(self).to(real.dtype)
        m = min(self.subset_size, len(real), len(fake))
        if m < 2:
            raise GenlitError("KID needs at least 2 generated and 2 real images")
        real_subsets, real_sums = self._real_subsets(m)
        rng = torch.Generator().manual_seed(self.seed + 1)  # the global RNG stays untouched
        scores = []
        for i, real_sum in zip(real_subsets, real_sums, strict=True):
            f = fake[torch.randperm(len(fake), generator=rng)[:m].to(fake.device)]  # (m, d)
            kernel = self._kernel(
                torch.cat([real[i], f]), f
            )  # (2m, m): k(real, fake); k(fake, fake)
            cross = kernel[:m].sum(dtype=torch.float64)
            fake_sum = self._off_diagonal_sum(kernel[m:])
            # torchmetrics' unbiased MMD^2 (Binkowski et al., 2018)
            scores.append((real_sum + fake_sum) / (m * (m - 1)) - 2 * cross / m**2)
        kid = torch.stack(scores)
        return kid.mean(), kid.std(unbiased=False)


class _ReferenceManifold(Metric):
    """Precision, recall, density and coverage of the generated features against fixed real ones.

    Like :class:`_ReferenceKID`: the real features are a buffer, identical on every rank; the
    generated ones a state that torchmetrics concatenates over ranks at ``compute``.
    """

    full_state_update = False

    def __init__(self, reference: Tensor, nearest_k: int = 5) -> None:
        super().__init__()
        self.register_buffer("reference", reference, persistent=False)
        self.nearest_k = nearest_k
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor) -> None:
        self.fake_features.append(features.float())

    def compute(self) -> dict[str, float]:
        from genlit.metrics.manifold import ManifoldStats, manifold_statistics

        fake = dim_zero_cat(self.fake_features)
        if len(fake) <= self.nearest_k or len(self.reference) <= self.nearest_k:
            raise GenlitError(
                f"precision and recall with nearest_k={self.nearest_k} need more than "
                f"{self.nearest_k} generated and real images: raise num_samples"
            )
        stats = manifold_statistics(self.reference, fake, self.nearest_k)
        return dict(zip(ManifoldStats.__annotations__, stats, strict=True))


class FeatureDistances(nn.Module):
    """FID (and KID) of generated images against fixed real statistics, one feature pass each.

    Call :meth:`set_reference` once, :meth:`update` with generated batches, :meth:`compute`,
    then :meth:`reset`, which clears the generated side only. Under DDP each rank updates
    with its own samples and torchmetrics sums the states at ``compute``.

    Args:
        network: The feature network.
        image_shape: ``(C, H, W)`` of the images (finds d for networks that do not say it).
        kid: Also compute KID (keeps the reference features, ``N x d`` floats, in memory).
        kid_subsets: KID's number of random subsets.
        kid_subset_size: KID's subset size, capped at the smaller of the two sample counts.
        seed: Seed of KID's subsets.
        precision_recall: Also compute precision, recall, density and coverage
            (:mod:`genlit.metrics.manifold`); like KID, it keeps the reference features.
        nearest_k: Their k-nearest-neighbour k.
        copying: Also compute the data-copying figures (:mod:`genlit.metrics.copying`) once
            :meth:`set_copying` has given the training and held-out features; keeps the
            reference features, as KID does.
        copying_cells: C_T's k-means cells (``None``: about 200 samples per cell, at most 50).
        copying_min_cell_samples: C_T skips cells with fewer samples.
    """

    def __init__(
        self,
        network: FeatureExtractor,
        image_shape: tuple[int, int, int] | None = None,
        kid: bool = True,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
        precision_recall: bool = False,
        nearest_k: int = 5,
        copying: bool = False,
        copying_cells: int | None = None,
        copying_min_cell_samples: int = 20,
    ) -> None:
        super().__init__()
        self.network = network
        if network.num_features is None and image_shape is None:
            raise ValueError(f"{network.name} does not say its feature size: give image_shape")
        self.num_features = network.output_dim(image_shape) if image_shape else network.num_features
        self.fid = FrechetInceptionDistance(
            feature=_Precomputed(self.num_features), reset_real_features=False
        )
        self.kid: _ReferenceKID | None = None
        self._kid_args = dict(subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
        self._kid_wanted = kid
        self.manifold: _ReferenceManifold | None = None
        self._manifold_wanted = precision_recall
        if nearest_k < 1:
            raise ValueError(f"nearest_k must be >= 1, got {nearest_k}")
        self.nearest_k = nearest_k
        self.reference: ReferenceStats | None = None
        self.image_shape = image_shape
        if kid:
            self._build_kid(torch.zeros(0, self.num_features))
        if precision_recall:
            self.manifold = _ReferenceManifold(torch.zeros(0, self.num_features), nearest_k)
        if copying_cells is not None and copying_cells < 1:
            raise ValueError(f"copying_cells must be >= 1 or null, got {copying_cells}")
        self._copying_wanted = copying
        self._copying_args = dict(
            cells=copying_cells, min_cell_samples=copying_min_cell_samples, seed=seed
        )
        self.copying: Any = None
        """The :class:`~genlit.metrics.copying.Copying` metric, once :meth:`set_copying` ran."""
        self.copying_enabled = True
        """Whether the next samples also go to the copying metric (the FID callback sets it)."""

    @property
    def keeps_features(self) -> bool:
        """Whether the reference must carry every real feature (KID, precision and recall,
        the data-copying figures)."""
        return self._kid_wanted or self._manifold_wanted or self._copying_wanted

    def set_copying(
        self,
        train: Tensor,
        held_out: Tensor,
        members: Tensor | None = None,
        non_members: Tensor | None = None,
        cache_file: Callable[[int], Any] | None = None,
    ) -> None:
        """Gives the data-copying figures their real sides.

        Args:
            train: Features of the training images ``(l, d)``.
            held_out: Features of real images never trained on ``(n, d)``.
            members: Indices into ``train`` of the images the model holds state for (the
                member test); ``None``: no member test.
            non_members: Features of as many images the model does not hold.
            cache_file: Where the held-out side is kept (``cells -> path``), or ``None``.
        """
        from genlit.metrics.copying import Copying

        self.copying = Copying(
            train.to(self.fid.device), held_out.to(self.fid.device),
            members=members, non_members=non_members, cache_file=cache_file, **self._copying_args,
        ).to(self.fid.device)  # fmt: skip

    def _build_kid(self, reference: Tensor) -> None:
        device = self.fid.device
        with warnings.catch_warnings():  # "KID will save all extracted features in buffer"
            warnings.simplefilter("ignore")
            self.kid = _ReferenceKID(
                reference, feature=_Precomputed(self.num_features), **self._kid_args
            ).to(device)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Features ``(B, d)`` of uint8 images ``(B, C, H, W)``."""
        if images.dtype != torch.uint8:
            raise TypeError(
                f"feature networks take uint8 images (use to_uint8), got {images.dtype}"
            )
        return self.network(images)

    def update(self, images: Tensor) -> None:
        """Adds generated uint8 images ``(B, C, H, W)``."""
        if self.image_shape is not None and tuple(images.shape[1:]) != tuple(self.image_shape):
            raise GenlitError(
                f"generated images are {'x'.join(map(str, images.shape[1:]))} but the real ones "
                f"are {'x'.join(map(str, self.image_shape))}: set the generator's channels and "
                "image_size to the datamodule's"
            )
        self.update_features(self.features(images), real=False)

    @torch.no_grad()
    def update_features(self, features: Tensor, real: bool = False) -> None:
        """Adds features ``(B, d)`` computed elsewhere, to the generated (or the real) side."""
        self.fid.update(features, real=real)
        if self.kid is not None and not real:
            self.kid.update(features, real=False)
        if self.manifold is not None and not real:
            self.manifold.update(features)
        if self.copying is not None and self.copying_enabled and not real:
            self.copying.update(features)

    def measure(self, batches: Iterable[Tensor], key: dict[str, Any]) -> ReferenceStats:
        """Reference statistics of real uint8 batches (the generated side is left untouched)."""
        total = torch.zeros(self.num_features, dtype=torch.float64, device=self.fid.device)
        outer = torch.zeros(
            self.num_features, self.num_features, dtype=torch.float64, device=total.device
        )
        kept, count, shape = [], 0, None
        for images in batches:
            shape = list(images.shape[1:])
            feats = self.features(images.to(total.device)).double()  # (B, d)
            total += feats.sum(dim=0)
            outer += feats.T @ feats  # (d, d), as torchmetrics accumulates it
            count += len(feats)
            if self.keeps_features:
                kept.append(feats.float().cpu())
        if shape is None:
            raise GenlitError(f"no real images for {key.get('dataset')} ({key.get('split')} split)")
        features = torch.cat(kept) if kept else None
        return ReferenceStats(key, total.cpu(), outer.cpu(), count, tuple(shape), features)

    def set_reference(self, stats: ReferenceStats, hold: bool = True) -> None:
        """Makes ``stats`` the real side; the generated side starts empty.

        Args:
            stats: The reference statistics.
            hold: Whether this rank carries FID's real sums. Under DDP only rank 0 does (the
                states are summed over ranks at ``compute``); KID's features are on every rank.
        """
        if self.keeps_features and stats.features is None:
            raise GenlitError(
                "these reference statistics were saved without features: KID and precision/"
                "recall need them"
            )
        self.reference = stats
        self.image_shape = stats.image_shape
        self.fid.reset()
        scale = 1.0 if hold else 0.0
        set_fid_real_statistics(
            self.fid,
            stats.features_sum * scale,
            stats.cov_sum * scale,
            stats.num_samples if hold else 0,
        )
        if self._kid_wanted:
            self._build_kid(stats.features.to(self.fid.device))
        if self._manifold_wanted:
            self.manifold = _ReferenceManifold(stats.features.to(self.fid.device), self.nearest_k)

    def compute(self) -> dict[str, float]:
        """``{"fid": ..., "kid_mean": ..., "kid_std": ...}`` over every rank's generated images."""
        if self.reference is None:
            raise RuntimeError("set_reference() first")
        values = {"fid": float(self.fid.compute())}
        if self.kid is not None:
            kid_mean, kid_std = self.kid.compute()
            values.update(kid_mean=float(kid_mean), kid_std=float(kid_std))
        if self.manifold is not None:
            values.update(self.manifold.compute())
        if self.copying is not None and self.copying_enabled:
            from genlit.metrics.copying import mifid

            values.update(self.copying.compute())
            values["mifid"] = mifid(values["fid"], values["memorization"])
        return values

    def reset(self) -> None:
        """Clears the generated side; the reference stays."""
        self.fid.reset()
        if self.kid is not None:
            self.kid.reset()
        if self.manifold is not None:
            self.manifold.reset()
        if self.copying is not None:
            self.copying.reset()


class InceptionScoreSide(nn.Module):
    """torchmetrics' Inception Score of generated uint8 images, on TF-Inception's logits.

    Needs the Inception weights (the same file as Inception FID); ``compute`` draws its split
    permutation on a forked RNG stream, so measuring leaves training's random state alone.

    Args:
        weights_path: A local copy of the Inception weights (else the torch hub folder).
        splits: The score's number of splits (10, as in Salimans et al.).
    """

    def __init__(self, weights_path: str | Path | None = None, splits: int = 10) -> None:
        super().__init__()
        from torchmetrics.image.inception import InceptionScore

        from genlit.metrics.features import InceptionLogits

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "will save all extracted features in buffer"
            self.metric = InceptionScore(feature=InceptionLogits(weights_path), splits=splits)

    def update(self, images: Tensor) -> None:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        self.metric.update(images)

    def compute(self) -> dict[str, float]:
        with torch.random.fork_rng(devices=[self.metric.device] if self.metric.device.type == "cuda" else []):
            torch.manual_seed(0)
            mean, std = self.metric.compute()
        return {"is_mean": float(mean), "is_std": float(std)}

    def reset(self) -> None:
        self.metric.reset()


class Tee:
    """Gives each generated uint8 batch to several metrics (FID, class counts, IS)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [sink for sink in sinks if sink is not None]

    def update(self, images: Tensor) -> None:
        for sink in self.sinks:
            sink.update(images)


def generate_into(
    distances: FeatureDistances,
    sample: Callable[[int], Tensor],
    n: int,
    batch_size: int = 500,
) -> int:
    """Draws ``n`` images with ``sample(b)`` in batches and adds them to the generated side.

    Args:
        distances: Receives the images.
        sample: Returns ``b`` images ``(b, C, H, W)`` in [-1, 1] (``model.sample``).
        n: Number of images.
        batch_size: Images per call of ``sample``.

    Returns:
        The number of images added.

    Raises:
        ValueError: ``batch_size`` < 1 (the loop would never advance).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        with torch.no_grad():
            images = sample(b)
        if images.dim() != 4:
            raise GenlitError(
                f"FID needs images (N, C, H, W) but sample() returns shape {tuple(images.shape)}"
            )
        distances.update(to_uint8(images))
        done += b
    return done
