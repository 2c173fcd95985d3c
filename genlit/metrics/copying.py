"""Data copying: how close samples come to the training images, against held-out real images.

FID compares samples with real images of the same distribution, so a model that returns
lightly changed training images scores as well as one that generalises. These figures, in the
same feature space as the FID, tell the two apart by measuring against the *training* images,
with held-out real images (never trained on) as the yardstick:

* **nearest-neighbour distances**: every sample's distance to its nearest training image,
  beside the same for the held-out images. ``nn_ratio`` is the median of the first over the
  median of the second (about 1 for a model that generalises, well below 1 for one that
  copies); ``closer_share`` the share of samples nearer to the training set than the held-out
  images' 5th percentile (about 5% when generalising).
* **C_T** (Meehan, Chaudhuri and Dasgupta, "A Non-Parametric Test to Detect Data-Copying in
  Generative Models", AISTATS 2020): the training features are cut into cells by k-means; in
  each cell a Mann-Whitney U test compares the samples' distances to the cell's training
  images with the held-out images' distances, z-scored under the null hypothesis (with the
  paper's 0.5 continuity correction); C_T is the average z, weighted by the held-out images'
  share of each cell, over the cells holding at least ``min_cell_samples`` samples (the
  paper's tau; the others are skipped, as the paper says). C_T well below 0: copying; near 0:
  generalising; well above 0: underfitting (samples farther from the data than real images).
* **memorization distance of MiFID** (Bai et al., "On Training Sample Memorization", KDD
  2021): the mean over samples of the smallest cosine distance ``1 - |cos|`` to a training
  feature; MiFID is the FID divided by it when it is below the threshold (0.1, the paper's
  and torchmetrics'), the FID itself otherwise. Reported beside the FID, never instead.
* **member test**: for models that hold state per training image (AE-OT's target codes,
  GLANN's codes), the share of samples nearer to one of the images the model holds than to
  any of as many other real images; 50% means the held images have no advantage.

:class:`Copying` is the torchmetrics metric (the samples' features a state concatenated over
DDP ranks, the real features fixed buffers identical on every rank); the pure functions below
it compute each figure. Distances are searched in chunks so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from genlit.errors import GenlitError

__all__ = [
    "Copying",
    "CopyingStats",
    "FIGURES",
    "c_t_statistic",
    "copying_sides",
    "default_cells",
    "describe",
    "kmeans_cells",
    "member_share",
    "memorization_distance",
    "mifid",
    "training_images",
    "nearest",
    "nearest_both",
]

MIFID_THRESHOLD = 0.1
"""MiFID's memorization threshold (Bai et al. 2021; torchmetrics' ``cosine_distance_eps``)."""

_ELEMENTS = 1 << 24  # distance-matrix entries computed at once (64 MiB of float32)


FIGURES = ("nn_ratio", "closer_share", "c_t", "c_t_cells", "memorization", "memorization_held_out")
"""The names of :class:`CopyingStats`' fields, in order (the keys the metric returns)."""


class CopyingStats(NamedTuple):
    """The data-copying figures of one set of samples."""

    nn_ratio: float
    """Median distance of a sample to the training set over the held-out images' median."""
    closer_share: float
    """Share of samples nearer the training set than the held-out images' 5th percentile."""
    c_t: float
    """Meehan et al.'s C_T: << 0 copying, ~ 0 generalising, >> 0 underfitting (NaN: no cell)."""
    c_t_cells: int
    """Cells that held enough samples to count in C_T."""
    memorization: float
    """MiFID's memorization distance: mean smallest cosine distance to a training feature."""
    memorization_held_out: float
    """The same for the held-out real images: the yardstick (MiFID's 0.1 threshold was set on
    Inception features; other feature spaces put real images elsewhere)."""


def nearest(queries: Tensor, reference: Tensor, cosine: bool = False) -> tuple[Tensor, Tensor]:
    """Distance of every query to its nearest reference point, and that point's index.

    Args:
        queries: ``(N, d)``.
        reference: ``(M, d)``.
        cosine: ``1 - |cos|`` (MiFID's distance) instead of the Euclidean distance.

    Returns:
        ``(distances (N,), indices (N,))``, computed in chunks of queries so that at most
        about 16M distances are held at once.
    """
    if len(reference) == 0:
        raise ValueError("nearest() needs at least one reference point")
    queries, reference = queries.float(), reference.float().to(queries.device)
    if cosine:
        queries = torch.nn.functional.normalize(queries, dim=1)
        reference = torch.nn.functional.normalize(reference, dim=1)
    rows = max(1, _ELEMENTS // len(reference))
    found, where = [], []
    for chunk in queries.split(rows):
        if cosine:
            similarity = (chunk @ reference.T).abs_()  # (rows, M)
            best, index = similarity.max(dim=1)
            found.append(1.0 - best)
        else:
            best, index = torch.cdist(chunk, reference).min(dim=1)  # (rows,)
            found.append(best)
        where.append(index)
    if not found:
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    return torch.cat(found), torch.cat(where)


def nearest_both(queries: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`nearest` in both distances from one matrix product per tile: the Euclidean
    distance and index of the nearest reference point, and the smallest ``1 - |cos|``.

    The nearest point minimises ``|b|^2 - 2 a.b`` and the cosine is ``a.b / (|a| |b|)``, so
    both come from the products ``a.b``, the costly part. Tiles of queries by reference
    points are small enough to stay in cache for the passes after the product; the distance
    to the point found is then computed directly (products of large norms would blur the
    distance of a near-copy).
    """
    queries, reference = queries.float(), reference.float().to(queries.device)
    ref_sq = reference.pow(2).sum(dim=1)  # (M,)
    ref_inv = ref_sq.sqrt().clamp_min(1e-12).reciprocal()
    rows, cols = 1024, 2048  # 8 MiB tiles: the fastest of those measured on a 2-core CPU
    best_index, best_cos = [], []
    for chunk in queries.split(rows):
        score = torch.full((len(chunk),), math.inf, device=chunk.device)
        index = torch.zeros(len(chunk), dtype=torch.long, device=chunk.device)
        cos = torch.zeros(len(chunk), device=chunk.device)
        for start in range(0, len(reference), cols):
            block = slice(start, start + cols)
            tile = torch.addmm(ref_sq[block], chunk, reference[block].T, alpha=-2)  # |b|^2 - 2 a.b
            tile_score, tile_index = tile.min(dim=1)
            better = tile_score < score
            score = torch.where(better, tile_score, score)
            index = torch.where(better, tile_index + start, index)
            low, high = tile.sub_(ref_sq[block]).mul_(ref_inv[block]).aminmax(dim=1)  # -2 a.b / |b|
            cos = torch.maximum(cos, torch.maximum(-low, high) / 2)  # max |a.b| / |b|
        best_index.append(index)
        best_cos.append(cos / chunk.norm(dim=1).clamp_min(1e-12))
    index = torch.cat(best_index)
    distance = (queries.double() - reference[index].double()).norm(dim=1).float()
    return distance, index, 1.0 - torch.cat(best_cos)


def memorization_distance(samples: Tensor, train: Tensor) -> float:
    """MiFID's memorization distance: mean over samples of the smallest ``1 - |cos|`` to ``train``."""
    return float(nearest(samples, train, cosine=True)[0].double().mean())


def default_cells(num_samples: int, num_held_out: int) -> int:
    """C_T's default number of k-means cells: about 200 samples and held-out images per cell
    (the paper's MNIST setting gives 50 cells to 10,000 of each), at least 1, at most 50."""
    return max(1, min(50, min(num_samples, num_held_out) // 200))


KMEANS_POINTS = 10_000
"""Training features the k-means is fitted to (a seeded draw when there are more): any
partition fixed before the samples are seen makes a valid test, and this one costs seconds."""


def kmeans_cells(train: Tensor, cells: int, seed: int = 0) -> Tensor:
    """k-means centres ``(cells, d)`` of the training features (scikit-learn's, seeded; fitted
    to at most :data:`KMEANS_POINTS` of them)."""
    from sklearn.cluster import KMeans

    if cells < 1:
        raise ValueError(f"C_T needs at least one cell, got cells={cells}")
    if len(train) < cells:
        raise GenlitError(
            f"C_T: {len(train)} training images cannot make {cells} k-means cells: lower copying_cells"
        )
    data = train.detach().float().cpu()
    if len(data) > KMEANS_POINTS:
        data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:KMEANS_POINTS]]
    model = KMeans(n_clusters=cells, n_init=3, random_state=seed).fit(data.double().numpy())
    return torch.from_numpy(model.cluster_centers_).float()


def _cell_of(features: Tensor, centres: Tensor) -> Tensor:
    return nearest(features, centres)[1]


def _within_cell_distances(
    points: Tensor, point_cells: Tensor, train: Tensor, train_cells: Tensor, cells: int
) -> Tensor:
    """Distance of every point to the nearest training feature of its own cell (the paper's)."""
    out = torch.full((len(points),), math.inf, device=points.device)
    for c in range(cells):
        mine, theirs = point_cells == c, train_cells == c
        if mine.any() and theirs.any():
            out[mine] = nearest(points[mine], train[theirs])[0]
    return out


def _z_u(sample_distances: np.ndarray, held_out_distances: np.ndarray) -> float:
    """Meehan et al.'s z-scored Mann-Whitney U of the samples' against the held-out distances."""
    from scipy.stats import mannwhitneyu

    m, n = len(sample_distances), len(held_out_distances)
    u = mannwhitneyu(sample_distances, held_out_distances, alternative="less").statistic
    mean = m * n / 2 - 0.5  # the paper's continuity correction
    return float((u - mean) / math.sqrt(m * n * (m + n + 1) / 12))


def c_t_statistic(
    samples: Tensor,
    held_out: Tensor,
    train: Tensor,
    centres: Tensor,
    min_cell_samples: int = 20,
    held_out_terms: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[float, int]:
    """Meehan et al.'s C_T of ``samples`` against ``held_out``, both measured to ``train``.

    Args:
        samples: Generated features ``(m, d)``.
        held_out: Held-out real features ``(n, d)``, never trained on.
        train: Training features ``(l, d)``.
        centres: k-means centres of ``train`` (:func:`kmeans_cells`).
        min_cell_samples: Cells with fewer samples are skipped (the paper's tau times m).
        held_out_terms: ``(train_cells, held_out_cells, held_out_distances)`` computed before
            for the same features (the metric reuses them across evaluations).

    Returns:
        ``(C_T, cells counted)``; C_T is NaN when no cell holds enough samples.
    """
    cells = len(centres)
    if held_out_terms is None:
        held_out_terms = held_out_side(held_out, train, centres)
    train_cells, held_cells, held_distances = held_out_terms
    sample_cells = _cell_of(samples, centres)
    sample_distances = _within_cell_distances(samples, sample_cells, train, train_cells, cells)
    held_share = torch.bincount(held_cells.cpu(), minlength=cells).double() / len(held_out)
    sample_counts = torch.bincount(sample_cells.cpu(), minlength=cells)
    total, weight, counted = 0.0, 0.0, 0
    for c in range(cells):
        if sample_counts[c] < min_cell_samples or held_share[c] == 0:
            continue
        z = _z_u(
            sample_distances[sample_cells == c].cpu().numpy(),
            held_distances[held_cells == c].cpu().numpy(),
        )
        total += float(held_share[c]) * z
        weight += float(held_share[c])
        counted += 1
    return (total / weight if counted else math.nan), counted


def held_out_side(held_out: Tensor, train: Tensor, centres: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The parts of C_T that do not depend on the samples: every training and held-out
    feature's cell, and each held-out feature's distance to its cell's training features."""
    train_cells = _cell_of(train, centres)
    held_cells = _cell_of(held_out, centres)
    distances = _within_cell_distances(held_out, held_cells, train, train_cells, len(centres))
    return train_cells, held_cells, distances


def member_share(samples: Tensor, members: Tensor, others: Tensor) -> float:
    """Share of samples strictly nearer to one of ``members`` than to any of ``others``.

    About 50% when the images a model holds (``members``) have no advantage over as many other
    real images; near 100% when the samples are those images.
    """
    if len(members) == 0 or len(others) == 0:
        raise GenlitError("the member test needs member and non-member images")
    to_members = nearest(samples, members)[0]
    to_others = nearest(samples, others)[0]
    return float((to_members < to_others).double().mean())


class Copying(Metric):
    """The data-copying figures of generated features against fixed training and held-out ones.

    The real features are buffers, identical on every rank; the generated features a state
    that torchmetrics concatenates over DDP ranks at ``compute``, so every rank computes the
    same figures from the same samples. What does not depend on the samples (the k-means
    cells, every held-out image's distances to the training set) is computed at the first
    ``compute`` and reused, and with ``cache_file`` kept on disk for the next run.

    Args:
        train: Features of the training images ``(l, d)``.
        held_out: Features of held-out real images ``(n, d)`` (the test split).
        cells: C_T's k-means cells; ``None``: :func:`default_cells` of the first evaluation.
        min_cell_samples: C_T skips cells with fewer samples.
        seed: Seed of the k-means.
        members: Indices into ``train`` of the images the model holds state for; ``None``: no
            member test.
        non_members: Features of as many images the model does not hold (other training
            images, or held-out ones when fewer other training images are left).
        cache_file: Where the held-out side is kept, given the cell count: a function of it
            (the caller's key names the two reference sets); ``None``: not kept.
    """

    full_state_update = False

    def __init__(
        self,
        train: Tensor,
        held_out: Tensor,
        cells: int | None = None,
        min_cell_samples: int = 20,
        seed: int = 0,
        members: Tensor | None = None,
        non_members: Tensor | None = None,
        cache_file: Callable[[int], Any] | None = None,
    ) -> None:
        super().__init__()
        if len(train) < 2 or len(held_out) < 2:
            raise GenlitError(
                f"data-copying figures need at least 2 training and 2 held-out images, got "
                f"{len(train)} and {len(held_out)}"
            )
        if cells is not None and cells < 1:
            raise ValueError(f"copying_cells must be >= 1, got {cells}")
        self.register_buffer("train_features", train.float(), persistent=False)
        self.register_buffer("held_out_features", held_out.float(), persistent=False)
        self.register_buffer(
            "member_features", torch.zeros(0) if members is None else train[members].float(), persistent=False
        )
        self.register_buffer(
            "non_member_features", torch.zeros(0) if non_members is None else non_members.float(), persistent=False
        )
        self.cells, self.min_cell_samples, self.seed = cells, min_cell_samples, seed
        self.cache_file = cache_file
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self._held: dict[str, Tensor] | None = None

    def update(self, features: Tensor) -> None:
        self.fake_features.append(features.float())

    def held_side(self, num_samples: int) -> dict[str, Tensor]:
        """The sample-free part: ``centres``, ``train_cells``, ``held_cells``,
        ``held_cell_distances`` (C_T), ``held_nearest`` and ``held_memorization`` (each held-out
        image's nearest-training distances)."""
        cells = self.cells or default_cells(num_samples, len(self.held_out_features))
        if num_samples < cells:
            raise GenlitError(
                f"C_T with {cells} k-means cells needs at least {cells} samples, got "
                f"{num_samples}: raise num_samples or lower copying_cells"
            )
        if len(self.held_out_features) < cells:
            raise GenlitError(
                f"C_T with {cells} k-means cells needs at least {cells} held-out images, got "
                f"{len(self.held_out_features)}: lower copying_cells"
            )
        if self._held is not None and len(self._held["centres"]) == cells:
            return self._held
        device = self.train_features.device
        path = self.cache_file(cells) if self.cache_file is not None else None
        held = _read_held(path, len(self.train_features), len(self.held_out_features), cells)
        if held is None:
            centres = kmeans_cells(self.train_features, cells, self.seed).to(device)
            train_cells, held_cells, held_cell_distances = held_out_side(
                self.held_out_features, self.train_features, centres
            )
            held_nearest, _, held_cosine = nearest_both(self.held_out_features, self.train_features)
            held = {
                "centres": centres, "train_cells": train_cells, "held_cells": held_cells,
                "held_cell_distances": held_cell_distances, "held_nearest": held_nearest,
                "held_memorization": held_cosine.double().mean(),
            }  # fmt: skip
            if path is not None:
                _write_held(path, held)
        self._held = {k: v.to(device) for k, v in held.items()}
        return self._held

    def nearest_training(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """For features ``(n, d)``: the row of the nearest training feature, and the distance
        to it over the held-out images' median distance to the training set (1: as far as
        real images; near 0: a copy). Call after a ``compute``."""
        if self._held is None:
            raise RuntimeError("nearest_training() after compute()")
        distances, rows = nearest(features.to(self.train_features.device), self.train_features)
        return rows, distances / self._held["held_nearest"].median().clamp_min(1e-12)

    def compute(self) -> dict[str, float]:
        samples = dim_zero_cat(self.fake_features)
        if len(samples) < 2:
            raise GenlitError("data-copying figures need at least 2 samples")
        held = self.held_side(len(samples))
        to_train, _, cosine = nearest_both(samples, self.train_features)
        reference = held["held_nearest"].double()
        ratio = float(to_train.double().median() / reference.median().clamp_min(1e-12))
        closer = float((to_train.double() < torch.quantile(reference, 0.05)).double().mean())
        terms = (held["train_cells"], held["held_cells"], held["held_cell_distances"])
        c_t, counted = c_t_statistic(
            samples, self.held_out_features, self.train_features, held["centres"],
            self.min_cell_samples, terms,
        )  # fmt: skip
        stats = CopyingStats(
            ratio, closer, c_t, counted, float(cosine.double().mean()), float(held["held_memorization"])
        )
        values = dict(zip(FIGURES, stats, strict=True))
        if len(self.member_features):
            values["member_share"] = member_share(samples, self.member_features, self.non_member_features)
        return values


def _read_held(path: Any, num_train: int, num_held: int, cells: int) -> dict[str, Tensor] | None:
    """The cached held-out side, or None (no file, unreadable, or of other sizes)."""
    if path is None or not path.is_file():
        return None
    try:
        held = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache file is a cache miss
        return None
    sizes = (len(held.get("train_cells", ())), len(held.get("held_nearest", ())), len(held.get("centres", ())))
    return held if sizes == (num_train, num_held, cells) else None


def _write_held(path: Any, held: dict[str, Tensor]) -> None:
    """Writes atomically: a partial file never looks like a cache hit; a folder that cannot
    be written only costs the next run the computation."""
    import os

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({k: v.cpu() for k, v in held.items()}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass


def training_images(datamodule: Any, rows: Tensor) -> Tensor:
    """The training split's uint8 images at ``rows`` (their order in
    :func:`~genlit.metrics.fid.real_batches`, the order of the training features)."""
    from genlit.metrics.fid import real_batches

    rows = rows.cpu().long()
    found: dict[int, Tensor] = {}
    offset = 0
    for batch in real_batches(datamodule, "train"):
        inside = rows[(rows >= offset) & (rows < offset + len(batch))]
        for row in inside.tolist():
            found[row] = batch[row - offset].cpu()
        offset += len(batch)
        if len(found) == len(set(rows.tolist())):
            break
    return torch.stack([found[row] for row in rows.tolist()])


def mifid(fid: float, memorization: float, threshold: float = MIFID_THRESHOLD) -> float:
    """MiFID: the FID divided by the memorization distance where it is below ``threshold``."""
    return fid / max(memorization, 1e-15) if memorization < threshold else fid


def describe(values: dict[str, float]) -> str:
    """One line of the copying figures, e.g. for the FID callback's result line."""
    line = (
        f"C_T {values['c_t']:.2f} over {int(values['c_t_cells'])} of the k-means cells, "
        f"nearest-training ratio {values['nn_ratio']:.3f}, {values['closer_share']:.1%} closer than "
        f"the held-out images' 5th percentile, memorization {values['memorization']:.3f} "
        f"(held-out images {values['memorization_held_out']:.3f})"
    )
    if "mifid" in values:
        line += f", MiFID {values['mifid']:.4g}"
    if "member_share" in values:
        line += f", member test {values['member_share']:.1%} (50% = no advantage)"
    return line


def copying_sides(
    datamodule: Any,
    split: str,
    reference: Any,
    load: Callable[[str], Any],
    model: Any = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Callable[[int], Any] | None]:
    """The real sides of :class:`Copying` for a run: training and held-out features, the
    member test's images where ``model`` holds state per training image, and where the
    held-out side is cached (next to the reference statistics, named by both files).

    Args:
        datamodule: The run's datamodule.
        split: The FID's reference split; its images are the held-out ones unless it is
            ``train`` (then the test split's are).
        reference: The FID's :class:`~genlit.metrics.fid.ReferenceStats` (with features).
        load: ``load(split)`` gives a split's reference statistics with features (cached).
        model: Asked for ``copying_members()``: the positions (the datamodule's ``indices``)
            of the training images it holds state for, or ``None``.
        seed: Picks the non-member images.

    Returns:
        ``(train, held_out, members, non_members, cache_file)`` for
        :meth:`FeatureDistances.set_copying`.

    Raises:
        GenlitError: no held-out split, or a model whose member images cannot be found.
    """
    from genlit.metrics.fid import real_positions

    train = load("train")
    if split == "train":
        try:
            held = load("test")
        except Exception as err:  # noqa: BLE001 - any way of lacking a test split says the same
            raise GenlitError(
                f"{type(datamodule).__name__} has no held-out split to compare with ({err}): the "
                "copying figures need real images never trained on; give the datamodule a test "
                "split, or set copying: off (the FID callback; copying: false in a study's evaluation)"
            ) from None
    else:
        held = reference
    if held.features is None or train.features is None:
        raise GenlitError("the reference statistics were saved without features")
    if len(held.features) < 2:
        raise GenlitError(f"the held-out split has {len(held.features)} image(s): the copying figures need 2 or more")
    cache = held_cache(train, held, seed)
    ask = getattr(model, "copying_members", None)
    positions = ask() if callable(ask) else None
    if positions is None:
        return train.features, held.features, None, None, cache
    train_positions = real_positions(datamodule, "train")
    if len(train_positions) != len(train.features):
        raise GenlitError("the training split gave positions and features of different lengths")
    held_rows = torch.isin(train_positions, positions.cpu().long())
    members = held_rows.nonzero().flatten()
    if len(members) == 0:
        raise GenlitError(
            f"{type(model).__name__} holds no image of this training split: the member test "
            "needs the datamodule the model was trained on"
        )
    rng = torch.Generator().manual_seed(seed)
    others = (~held_rows).nonzero().flatten()
    # Fewer other training images than members (the model holds nearly all of them): held-out
    # images, from the same distribution and as unseen, make the larger comparison.
    pool = train.features[others] if len(others) >= min(len(members), len(held.features)) else held.features
    count = min(len(members), len(pool))
    members = members[torch.randperm(len(members), generator=rng)[:count]]
    non_members = pool[torch.randperm(len(pool), generator=rng)[:count]]
    return train.features, held.features, members, non_members, cache


def held_cache(train: Any, held: Any, seed: int = 0) -> Callable[[int], Any] | None:
    """``cells -> path`` of the cached held-out side of two reference statistics files (in
    their folder); ``None`` when either was never saved."""
    import hashlib
    from pathlib import Path

    if train.path is None or held.path is None:
        return None
    folder, names = Path(train.path).parent, f"{Path(train.path).name}|{Path(held.path).name}|{seed}"

    def path(cells: int) -> Path:
        digest = hashlib.sha256(f"{names}|{cells}|{KMEANS_POINTS}".encode()).hexdigest()[:16]
        return folder / f"copying-{cells}cells-{digest}.pt"

    return path
