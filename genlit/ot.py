"""Semi-discrete optimal transport: the Brenier potential from a uniform box to N points.

The source ``mu`` is the uniform measure on the box ``[-0.5, 0.5]^d``; the target ``nu`` puts
mass ``nu_i`` (``1/N`` by default) on each point ``y_i``. For heights ``h`` the power cells are
``W_i(h) = {x : <x, y_i> + h_i >= <x, y_j> + h_j for all j}``, and the convex energy

    E(h) = integral of max_i (<x, y_i> + h_i) dmu(x) - sum_i nu_i h_i

has gradient ``mu(W_i(h)) - nu_i`` (Gu, Luo, Sun, Yau 2016). Its minimiser makes every cell
carry its point's mass: the optimal transport map sends ``x`` to the ``y_i`` of its cell, the
gradient of the convex piecewise-linear Brenier potential ``u_h(x) = max_i <x, y_i> + h_i``.
Where the target's support has gaps, the map is discontinuous across the facets between cells
whose points lie far apart (Figalli's regularity theory), which is what a continuous generator
cannot represent (Lei et al. 2019, An et al. 2020).

The cell measures are estimated by Monte Carlo (Sobol points, then uniform random blocks),
each point scored against its best few cells only, with a bound that keeps the measures exact
(:class:`_Candidates`). :meth:`SemiDiscreteOT.fit` takes damped Newton steps (Kitagawa, Merigot
and Thibert 2019) with the Hessian estimated from the same points, or pyOMT's Adam steps
(``method: adam``), and stops only when points it was never fitted on measure a total variation
within ``tolerance``, their sampling noise taken out (:func:`noise_tv`).

:class:`SemiDiscreteOT` is pure torch (no Lightning) and runs on the device its points are on.
Its generation map (:meth:`SemiDiscreteOT.generate`) is AE-OT's: a source point's own cell and
its ``k`` best neighbouring cells; across a regular facet a new point between ``y_i`` and
``y_j`` is made, across a singular one (:meth:`SemiDiscreteOT.singular`: by default ``y_j``
farther from ``y_i`` than ``y_i``'s 10th nearest point, or pyOMT's fixed facet angle) it never
interpolates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from genlit.errors import GenlitError


@dataclass
class FitReport:
    """What :meth:`SemiDiscreteOT.fit` did, for logs and benchmarks."""

    iterations: int
    total_variation: float
    """``sum_i |mu(W_i) - nu_i| / 2`` on the fitting points at the last iteration."""
    converged: bool
    """A check on points the fit never used estimated the total variation within the tolerance."""
    seconds: float
    monte_carlo_points: int
    """Fitting points at the end (newton: all blocks; adam: the last stage's Sobol points)."""
    held_out_error: float
    """``max_i |mu(W_i) - nu_i| / nu_i`` measured on independent points (their noise included)."""
    held_out_tv: float
    """The fit's total variation estimated on independent points, their sampling noise taken
    out (see :meth:`SemiDiscreteOT.fit`)."""
    history: list[float] = field(default_factory=list)
    """The total variation of every iteration."""
    full_passes: int = 0
    """Candidate caches built: each scored its points against every cell (the rest of the
    iterations used the candidates)."""
    method: str = "newton"
    held_out_raw_tv: float = math.nan
    """The final check's total variation as measured, sampling noise included."""
    held_out_noise: float = math.nan
    """That check's sampling noise (:func:`noise_tv`); ``held_out_tv`` is the two subtracted in
    quadrature."""
    held_out_points: int = 0
    """Points of the check that gave ``held_out_tv``."""
    adam_from: int = 0
    """newton: the iteration from which Adam's steps took over (0: none did)."""
    checks: list[Check] = field(default_factory=list)
    """The checks on new points during the fit, in order (the last decided ``converged``)."""


def _check_points(points: Tensor, name: str = "codes") -> Tensor:
    if not isinstance(points, Tensor) or points.dim() != 2:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise GenlitError(f"the OT target {name} must be a (N, d) tensor, got {shape}")
    if points.shape[0] < 2:
        raise GenlitError(
            f"the OT target has {points.shape[0]} {name}: semi-discrete OT needs at least 2 "
            "(fit it on the codes of a training set)"
        )
    if not bool(torch.isfinite(points).all()):
        bad = int((~torch.isfinite(points)).any(dim=1).sum())
        raise GenlitError(
            f"{bad} of the {points.shape[0]} OT target {name} are not finite (NaN or inf): the "
            "encoder that produced them diverged; train it again or drop those codes"
        )
    return points


class _Candidates:
    """The ``K`` best cells of each fixed Monte Carlo point, so an iteration scores K cells, not N.

    Within a stage the Sobol points stay the same and the heights move a little per iteration.
    At a refresh with heights ``h0`` each point keeps its ``K`` best cells, their ``<x, y_j>``
    and ``b(x)``, its ``K``-th best score. Any other cell ``j`` scores at most
    ``b(x) + max_j (h_j - h0_j)`` under new heights ``h``, so where the best cached score beats
    that bound the cached argmax is the exact one. Points where it does not are scored against
    all cells; when they are more than ``refresh_share`` of the points, the cache is rebuilt.
    The cell measures are therefore exactly those of a full pass, at a fraction of the cost.
    """

    def __init__(self, ot: SemiDiscreteOT, x: Tensor, heights: Tensor, k: int, refresh_share: float) -> None:
        self.ot, self.x = ot, x
        self.k = max(1, min(k, ot.num_points))
        self.refresh_share = refresh_share
        self.refreshes = 0
        self.rebuild(heights)

    def rebuild(self, heights: Tensor) -> None:
        ot, x, k = self.ot, self.x, self.k
        m = x.shape[0]
        self.cand = torch.empty(m, k, dtype=torch.long, device=x.device)
        self.dots = torch.empty(m, k, dtype=x.dtype, device=x.device)
        self.bound = torch.empty(m, dtype=x.dtype, device=x.device)
        chunk = ot.score_chunk
        for s in range(0, m, chunk):
            top = ot.scores(x[s:s + chunk], heights).topk(k, dim=1)
            self.cand[s:s + chunk] = top.indices
            self.dots[s:s + chunk] = top.values - heights[top.indices]
            self.bound[s:s + chunk] = top.values[:, -1] if k < ot.num_points else -math.inf
        self.h0 = heights.clone()
        self.refreshes += 1

    def evaluate(self, heights: Tensor, rebuild: bool = True) -> tuple[Tensor, Tensor, Tensor] | None:
        """The exact cell of every point, the cached candidates' scores ``(m, K)`` under
        ``heights`` and a mask of the points whose cell is among their candidates; ``None``
        without ``rebuild`` where the cache would have to be rebuilt for them."""
        rise = float((heights - self.h0).max())
        scores = self.dots + heights[self.cand]
        best = scores.max(1)
        cells = self.cand.gather(1, best.indices[:, None])[:, 0]
        sure = best.values > self.bound + rise
        unsure = (~sure).nonzero()[:, 0]
        if len(unsure) > self.refresh_share * len(cells):
            if not rebuild:
                return None
            self.rebuild(heights)
            return self.cand[:, 0].clone(), self.dots + heights[self.cand], torch.ones_like(sure)
        if len(unsure):
            cells[unsure] = self.ot.cells(self.x[unsure], heights)
        return cells, scores, sure

    def cells(self, heights: Tensor) -> Tensor:
        return self.evaluate(heights)[0]  # type: ignore[index]


@dataclass
class GenerationStats:
    """What the last :meth:`SemiDiscreteOT.generate` call did."""

    samples: int
    rejected_share: float
    """Share of samples whose nearest facet (to the second best cell) was singular: the map
    jumps there, and the sample was not made across it."""
    kept_share: float
    """Share of samples with no regular facet among the ``k`` cells examined: each is its cell's
    own code, unchanged."""


def noise_tv(masses: Tensor, points: int) -> float:
    """The total variation a perfect fit shows on ``points`` uniform random points: the sampling
    noise of a check, ``sum_i sqrt(2 nu_i (1 - nu_i) / (pi m)) / 2`` (binomial counts, normal
    approximation; within 1% from 20 points per cell on)."""
    return float((masses * (1 - masses) / points).sqrt().sum()) * math.sqrt(2 / math.pi) / 2


@dataclass
class Check:
    """The cells of a fit measured on independent uniform random points."""

    raw: float
    """``sum_i |mu_hat(W_i) - nu_i| / 2`` on the check's points: fit error plus sampling noise."""
    noise: float
    """The sampling noise alone (:func:`noise_tv`)."""
    estimate: float
    """The fit's own error, ``sqrt(max(raw^2 - noise^2, 0))``."""
    max_relative_error: float
    """``max_i |mu_hat(W_i) - nu_i| / nu_i`` on the check's points (noise included)."""
    points: int


def _measure(error: Tensor, masses: Tensor, points: int) -> Check:
    raw = float(error.abs().sum()) / 2
    noise = noise_tv(masses, points)
    return Check(raw, noise, math.sqrt(max(raw * raw - noise * noise, 0.0)),
                 float((error.abs() / masses).max()), points)


def _uniform(n: int, dim: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """``n`` uniform random points of the box, from ``generator`` (on ``like``'s device)."""
    return torch.rand(n, dim, generator=generator, device=like.device, dtype=like.dtype) - 0.5


class _Run:
    """The state of one fit: the fitting points (blocks with their candidate caches), the
    iteration count and history, and the checks on new points before they join the fit."""

    def __init__(self, ot: SemiDiscreteOT, tolerance: float, max_points: int, candidates: int,
                 progress: Callable[[int, float, int], None] | None, started: float,
                 max_seconds: float | None) -> None:
        self.ot, self.tolerance, self.max_points, self.candidates = ot, tolerance, max_points, candidates
        self.progress, self.started, self.max_seconds = progress, started, max_seconds
        self.blocks: list[_Candidates] = []
        self.retired = 0
        self.total = 0
        self.iteration = 0
        self.history: list[float] = []
        self.converged = False
        self.switched_at = 0
        self.checks: list[Check] = []
        self.generator = torch.Generator(device=ot.device).manual_seed(ot.seed + 104_729)

    @property
    def full_passes(self) -> int:
        """Builds of a candidate cache: each scores its points against every cell."""
        return self.retired + sum(b.refreshes for b in self.blocks)

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and time.perf_counter() - self.started > self.max_seconds

    def add(self, x: Tensor, heights: Tensor) -> _Candidates:
        block = _Candidates(self.ot, x, heights, self.candidates, refresh_share=0.05)
        self.blocks.append(block)
        self.total += x.shape[0]
        return block

    def counts(self, heights: Tensor, rebuild: bool = True) -> Tensor | None:
        """Points per cell under ``heights``; ``None`` without ``rebuild`` where a cache would
        have to be rebuilt (a step too long for the candidates)."""
        counts = torch.zeros(self.ot.num_points, dtype=heights.dtype, device=heights.device)
        for block in self.blocks:
            out = block.evaluate(heights, rebuild)
            if out is None:
                return None
            counts += torch.bincount(out[0], minlength=self.ot.num_points).to(counts.dtype)
        return counts

    def record(self, tv: float) -> None:
        self.iteration += 1
        self.history.append(tv)
        if self.progress is not None:
            self.progress(self.iteration, tv, self.total)

    def grow(self, heights: Tensor, n: int | None = None, keep: bool = True) -> Check:
        """Draws ``n`` new uniform random points (as many as the fit has), checks the heights on
        them (they were not fitted on them) and, with ``keep``, adds them to the fitting points.
        Sets ``converged`` when the check's estimate is within the tolerance and its noise small
        enough to say so."""
        n = min(self.total if n is None else n, self.max_points - self.total if keep else n)
        x = _uniform(n, self.ot.dim, self.generator, self.ot.points)
        if keep:
            cells = self.add(x, heights).cand[:, 0]
        else:
            cells = self.ot.cells(x, heights)
            self.retired += 1
        counts = torch.bincount(cells, minlength=self.ot.num_points).to(heights.dtype)
        check = _measure(counts / n - self.ot.masses, self.ot.masses, n)
        self.checks.append(check)
        if check.noise <= 2 * self.tolerance and check.estimate <= self.tolerance:
            self.converged = True
        return check


def _hessian(run: _Run, heights: Tensor, band: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """The energy's Hessian, a Laplacian ``D - W``, from the fitting points.

    ``W_ij`` is the area of the facet between cells ``i`` and ``j`` over ``|y_i - y_j|`` (times
    the source's density): the rate at which cell ``i`` loses mass to ``j`` as ``h_j`` rises.
    A point of cell ``i`` lies at distance ``gap / |y_i - y_j|`` from the facet's plane, where
    ``gap`` is its best score minus ``j``'s; each point adds ``exp(-distance / band) / band``
    for every cached candidate ``j``, a kernel estimate of the points' density at the facet that
    uses every candidate (a denser, less noisy graph than counting a thin slab). The first
    ``32 N`` fitting points are enough for a Newton direction. Returns ``W`` as
    ``(rows, cols, values)`` (each pair twice, not summed), its row sums ``D`` and the band used
    (by default the median distance from a point to its nearest facet).
    """
    ot = run.ot
    n = ot.num_points
    rows, cols, vals, parts, used = [], [], [], [], 0
    for block in run.blocks:
        if used >= 32 * n:
            break
        cells, scores, sure = block.evaluate(heights)  # type: ignore[misc]
        cells, scores, cand = cells[sure], scores[sure], block.cand[sure]
        gap = scores.max(1).values[:, None] - scores  # (m, K)
        spread = (ot.points[cells][:, None, :] - ot.points[cand]).norm(dim=-1).clamp_min(1e-12)
        parts.append((cells, cand, gap / spread, spread))
        used += len(sure)
    # Each cell's own band: the mean distance of its points to their nearest facet. A thin
    # cell (a sliver between near-identical codes) holds fewer points within a global band of
    # its facets than the facets' area implies, so one band for all would underrate it.
    sums = torch.zeros(n, dtype=heights.dtype, device=heights.device)
    counts = torch.zeros(n, dtype=heights.dtype, device=heights.device)
    for cells, _, distance, _ in parts:
        nearest = distance.masked_fill(distance <= 0, math.inf).min(1).values
        ok = torch.isfinite(nearest)
        sums.index_add_(0, cells[ok], nearest[ok].to(sums.dtype))
        counts.index_add_(0, cells[ok], torch.ones_like(sums[:1]).expand(int(ok.sum())))
    if band is None:
        band = max(float(sums.sum() / counts.sum().clamp_min(1)), 1e-12)
    own = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, band))
    for cells, cand, distance, spread in parts:
        pair = torch.minimum(own[cells][:, None], own[cand])  # (m, K)
        near = (distance > 0) & (distance < 8 * pair)
        rows.append(cells[:, None].expand_as(cand)[near])
        cols.append(cand[near])
        vals.append(torch.exp(-distance[near] / pair[near]) / (spread[near] * pair[near]))
    i, j, v = torch.cat(rows), torch.cat(cols), torch.cat(vals) * (0.5 / used)
    i, j, v = torch.cat([i, j]), torch.cat([j, i]), torch.cat([v, v]).to(heights.dtype)
    pairs, where = torch.unique(i * n + j, return_inverse=True)  # sum each pair once
    v = torch.zeros(len(pairs), dtype=v.dtype, device=v.device).index_add_(0, where, v)
    i, j = pairs // n, pairs % n
    degree = torch.zeros(n, dtype=heights.dtype, device=heights.device).index_add_(0, i, v)
    return i, j, v, degree, band


def _solve(w: tuple[Tensor, Tensor, Tensor], degree: Tensor, rhs: Tensor, iterations: int = 100,
           rtol: float = 1e-2) -> Tensor:
    """``(D - W) x = rhs`` by Jacobi-preconditioned conjugate gradients, ``x`` centred; cells
    without a measured facet (``D_i = 0``) take ``rhs_i`` over the mean degree."""
    isolated = degree <= 0
    scale = float(degree[~isolated].mean()) if bool((~isolated).any()) else 1.0
    ridge = 1e-3 * scale  # Levenberg-Marquardt damping: keeps weakly connected groups of cells in reach
    b = rhs - rhs.mean()
    inv = 1.0 / (degree + ridge)

    rows, cols, values = w

    def apply(v: Tensor) -> Tensor:
        return (degree + ridge) * v - torch.zeros_like(v).index_add_(0, rows, values * v[cols])

    x = torch.zeros_like(b)
    r = b.clone()
    r[isolated] = 0
    z = inv * r
    p = z.clone()
    rz = float(r @ z)
    stop = rtol * float(r.norm())
    for _ in range(iterations):
        if float(r.norm()) <= stop:
            break
        ap = apply(p)
        alpha = rz / max(float(p @ ap), 1e-300)
        x += alpha * p
        r -= alpha * ap
        z = inv * r
        rz, old = float(r @ z), rz
        p = z + (rz / max(old, 1e-300)) * p
    x[isolated] = b[isolated] / scale
    return x - x.mean()


def _rescue(run: _Run, heights: Tensor, counts: Tensor) -> Tensor:
    """Heights under which no cell is empty: each empty cell's height rises until it takes the
    ``ceil(nu_i M)`` fitting points nearest to it in score (from their best cell's score).

    Newton's Hessian only sees facets that have points near them, so a cell without points
    (tight clusters start that way: most of their Voronoi cells hold no Monte Carlo point)
    would get no step; Kitagawa, Merigot and Thibert's method needs every cell's mass positive.
    """
    empty = (counts == 0).nonzero()[:, 0]
    if len(empty) == 0:
        return heights
    ot = run.ot
    want = (ot.masses[empty] * run.total).ceil().clamp_min(1).long()
    gaps = []
    for block in run.blocks:
        best = torch.cat([ot.scores(block.x[s:s + ot.score_chunk], heights).max(1).values
                          for s in range(0, block.x.shape[0], ot.score_chunk)])
        cols = max(1, ot.score_chunk * ot.num_points // max(len(empty), 1))
        for s in range(0, block.x.shape[0], cols):
            x = block.x[s:s + cols]
            own = torch.addmm(heights[empty], x, ot.points[empty].T)  # (b, E)
            gaps.append((best[s:s + cols, None] - own).topk(int(want.max()), dim=0, largest=False).values)
    gaps = torch.cat(gaps).sort(dim=0).values  # (., E)
    rise = gaps.gather(0, (want - 1)[None])[0]
    out = heights.clone()
    out[empty] += rise * 1.0001 + 1e-12
    return out - out.mean()


def _newton(run: _Run, first: int, max_iterations: int) -> Tensor:
    ot = run.ot
    h = ot.heights.clone()
    run.add(ot._sobol(first, 0), h)
    stage_iterations, stalled, band, slow = 0, False, None, 0
    adam: _AdamSteps | None = None
    while run.iteration < max_iterations:
        counts = run.counts(h)
        if adam is None and bool((counts == 0).any()):  # type: ignore[union-attr]
            h = _rescue(run, h, counts)  # type: ignore[arg-type]
            counts = run.counts(h)
        grad = counts / run.total - ot.masses  # type: ignore[operator]
        tv = float(grad.abs().sum()) / 2
        run.record(tv)
        # The fitting points' own noise bounds what fitting them better can give.
        done = tv <= 0.25 * noise_tv(ot.masses, run.total) or stalled
        if done or (adam.stalled(grad) if adam is not None else stage_iterations >= 25):
            if run.total >= run.max_points or run.out_of_time():
                break
            run.grow(h)
            if run.converged:
                break
            stage_iterations, stalled, band = 0, False, None
            if adam is not None:
                adam.new_stage()
            continue
        if run.out_of_time():
            break
        stage_iterations += 1
        if adam is not None:
            h = adam.step(h, grad)
            continue
        *w, degree, band = _hessian(run, h, band)
        step = _solve(tuple(w), degree, grad)  # type: ignore[arg-type]
        stalled = True
        # Damped as in Kitagawa, Merigot and Thibert's method: the step is halved until the
        # fitting points' total variation falls (cells it empties are refilled next). The
        # kernel's Hessian runs about twice too large (candidates that are not adjacent count
        # too), so twice the step is tried first.
        for halving in range(-1, 16):
            trial = h - step / 2**halving
            trial -= trial.mean()
            # A step the candidates cannot follow is too long to trust; past a few halvings
            # the caches are rebuilt for it.
            trial_counts = run.counts(trial, rebuild=halving >= 6)
            if trial_counts is None:
                continue
            trial_tv = float((trial_counts / run.total - ot.masses).abs().sum()) / 2
            if trial_tv < tv:
                h, stalled = trial, False
                slow = slow + 1 if trial_tv > 0.97 * tv else 0
                break
        if slow >= 5:
            # Newton's model fails where cells are slivers between near-identical codes (tight
            # clusters in few dimensions): five steps in a row gained under 3% each. Adam's
            # steps need no model; they finish the fit.
            adam = _AdamSteps(0.1 * ot.neighbour_distance())
            run.switched_at = run.iteration
    return h


class _AdamSteps:
    """Adam on the heights, with pyOMT's stall rule; a step shrinks by ``decay`` per stage."""

    def __init__(self, lr: float, patience: int = 30, decay: float = 0.5) -> None:
        self.lr, self.patience, self.decay = lr, patience, decay
        self.m: Tensor | None = None
        self.v: Tensor | None = None
        self.t, self.best, self.bad = 0, math.inf, 0

    def stalled(self, grad: Tensor) -> bool:
        norm = float(grad.norm())
        if norm < self.best:
            self.best, self.bad = norm, 0
        else:
            self.bad += 1
        return self.bad > self.patience

    def new_stage(self) -> None:
        self.best, self.bad = math.inf, 0
        self.lr *= self.decay

    def step(self, h: Tensor, grad: Tensor) -> Tensor:
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(h), torch.zeros_like(h)
        self.t += 1
        self.m.mul_(0.9).add_(grad, alpha=0.1)
        self.v.mul_(0.999).add_(grad * grad, alpha=0.001)
        h = h - self.lr * (self.m / (1 - 0.9 ** self.t)) / ((self.v / (1 - 0.999 ** self.t)).sqrt() + 1e-12)
        return h - h.mean()


def _adam(run: _Run, first: int, max_iterations: int, lr: float, patience: int, decay: float) -> Tensor:
    """pyOMT's method: Adam at fixed Sobol points, doubled on a stall (the baseline)."""
    ot = run.ot
    h = ot.heights.clone()
    adam = _AdamSteps(lr, patience, decay)
    points, offset = first, 0
    run.add(ot._sobol(points, offset), h)
    while run.iteration < max_iterations:
        grad = run.counts(h) / run.total - ot.masses  # type: ignore[operator]
        tv = float(grad.abs().sum()) / 2
        run.record(tv)
        if run.out_of_time():
            break
        if adam.stalled(grad) or tv <= run.tolerance:
            # Fitted (or stalled) on these points: check on new ones, then twice as many
            # Sobol points replace them (pyOMT's doubling), with a smaller step.
            run.grow(h, n=points, keep=False)
            if run.converged or 2 * points > run.max_points:
                break
            offset, points = offset + points, 2 * points
            run.retired += sum(b.refreshes for b in run.blocks)
            run.blocks, run.total = [], 0
            run.add(ot._sobol(points, offset), h)
            adam.new_stage()
            continue
        h = adam.step(h, grad)
    return h


class SemiDiscreteOT:
    """The semi-discrete OT map from the uniform box ``[-0.5, 0.5]^d`` to weighted points.

    Args:
        points: The targets ``y_i``, shape ``(N, d)``; their device is where everything runs.
        masses: Their masses ``nu_i`` (any positive numbers, normalised to sum 1); uniform
            ``1/N`` by default.
        normalize: Fit to the points centred and scaled into the box (a shift and one scale
            factor, kept and undone by :meth:`generate`), so that ``angle_threshold`` means the
            same whatever the codes' range. The transport itself is unchanged by this: the
            cells of scaled points with scaled heights are the same cells.
        chunk: Source points scored against all targets at a time (``N x chunk`` floats).
        seed: Seed of the Sobol sequence's scrambling.
    """

    def __init__(
        self,
        points: Tensor,
        masses: Tensor | None = None,
        normalize: bool = True,
        chunk: int = 4096,
        seed: int = 0,
    ) -> None:
        points = _check_points(points.detach())
        n, d = points.shape
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.dim = d
        self.chunk = chunk
        self.seed = seed
        dtype = points.dtype if points.is_floating_point() else torch.float32
        points = points.to(dtype)
        if normalize:
            self.shift = points.mean(0)
            spread = (points - self.shift).abs().max().clamp_min(1e-12)
            self.scale = (0.5 / spread).reshape(())
        else:
            self.shift = torch.zeros(d, dtype=dtype, device=points.device)
            self.scale = torch.ones((), dtype=dtype, device=points.device)
        self.points = (points - self.shift) * self.scale
        if masses is None:
            masses = torch.full((n,), 1.0 / n, dtype=dtype, device=points.device)
        else:
            masses = masses.detach().to(points.device, dtype)
            if masses.shape != (n,) or not bool((masses > 0).all()) or not bool(torch.isfinite(masses).all()):
                raise GenlitError(f"OT masses must be {n} positive finite numbers, one per point")
            masses = masses / masses.sum()
        self.masses = masses
        # h_i = -|y_i|^2 / 2 makes the power cells the Voronoi cells of the points (every cell
        # holds its point's neighbourhood); h = 0 would leave every point inside the convex
        # hull without a cell.
        self.heights = -0.5 * (self.points * self.points).sum(1)
        self.heights -= self.heights.mean()

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def device(self) -> torch.device:
        return self.points.device

    @property
    def score_chunk(self) -> int:
        """Source points scored against all targets at a time: ``chunk``, and on the CPU at most
        what keeps one block of scores in the cache (about 2.5M floats; larger blocks are
        memory-bound and measured 2x slower on a 2-core machine)."""
        if self.device.type != "cpu":
            return self.chunk
        return max(64, min(self.chunk, 2_500_000 // self.num_points))

    def neighbour_distance(self, sample: int = 1000) -> float:
        """The median distance from a point to its nearest other point (over ``sample`` points)."""
        n = self.num_points
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:sample].to(self.device)
        best = torch.full((len(rows),), math.inf, dtype=self.points.dtype, device=self.device)
        for start in range(0, n, self.chunk):
            block = torch.cdist(self.points[rows], self.points[start:start + self.chunk])
            own = rows[:, None] == torch.arange(start, start + block.shape[1], device=self.device)[None]
            best = torch.minimum(best, block.masked_fill(own, math.inf).min(1).values)
        best = best[torch.isfinite(best)]
        positive = best[best > 0]
        return float(positive.median()) if len(positive) else 1.0 / n

    # --- Monte Carlo -----------------------------------------------------------------------

    def _sobol(self, n: int, offset: int = 0) -> Tensor:
        """``n`` scrambled Sobol points of the box: the sequence's points ``offset..offset+n``.

        One engine is kept and drawn from in order; another offset costs a restart and a
        fast-forward (linear in the offset).
        """
        engine = getattr(self, "_engine", None)
        if engine is None or self._drawn != offset:
            engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=self.seed)
            if offset:
                engine.fast_forward(offset)
            self._engine = engine
        self._drawn = offset + n
        return (engine.draw(n, dtype=torch.float64) - 0.5).to(self.device, self.points.dtype)

    def scores(self, x: Tensor, heights: Tensor | None = None) -> Tensor:
        """``<x, y_i> + h_i`` for source points ``x`` (in the box), shape ``(len(x), N)``."""
        h = self.heights if heights is None else heights
        return torch.addmm(h, x, self.points.T)

    def cells(self, x: Tensor, heights: Tensor | None = None) -> Tensor:
        """The index of the power cell of each source point (chunked)."""
        out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        chunk = self.score_chunk
        for start in range(0, x.shape[0], chunk):
            out[start:start + chunk] = self.scores(x[start:start + chunk], heights).argmax(1)
        return out

    def cell_measures(self, n: int, heights: Tensor | None = None, offset: int = 0) -> Tensor:
        """Monte Carlo estimate of ``mu(W_i(h))`` with ``n`` Sobol points, shape ``(N,)``."""
        counts = torch.zeros(self.num_points, dtype=self.points.dtype, device=self.device)
        for start in range(0, n, self.chunk):
            x = self._sobol(min(self.chunk, n - start), offset + start)
            counts += torch.bincount(self.cells(x, heights), minlength=self.num_points).to(counts.dtype)
        return counts / n

    def energy(self, n: int, heights: Tensor | None = None) -> float:
        """Monte Carlo estimate of ``E(h)`` with ``n`` Sobol points."""
        h = self.heights if heights is None else heights
        total = 0.0
        for start in range(0, n, self.chunk):
            x = self._sobol(min(self.chunk, n - start), start)
            total += float(self.scores(x, h).max(1).values.sum())
        return total / n - float((self.masses * h).sum())

    # --- the fit ---------------------------------------------------------------------------

    def fit(
        self,
        tolerance: float = 0.02,
        method: Literal["newton", "adam"] = "newton",
        max_iterations: int = 5_000,
        max_seconds: float | None = None,
        points_per_cell: float | None = None,
        max_points: int = 20_000_000,
        check_points_per_cell: float = 64.0,
        candidates: int = 16,
        lr: float | None = None,
        patience: int = 30,
        decay: float = 0.5,
        progress: Callable[[int, float, int], None] | None = None,
    ) -> FitReport:
        """Finds the heights, and says how well they fit on points they were not fitted on.

        ``newton`` (the default) is a damped Newton method (Kitagawa, Merigot and Thibert,
        JEMS 2019): the energy's Hessian is the Laplacian of the cells' adjacency, each facet
        weighted by its area over the distance of its two points, estimated from the same Monte
        Carlo points as the gradient (the points within a thin band of a facet, read off the
        candidate cache's scores), and the step is solved by conjugate gradients, then halved
        until the fitting points' total variation falls. The points grow by stages: a stage
        starts with ``points_per_cell`` Sobol points per unit of mean mass and ends when the
        fit on its points is well inside their Monte Carlo noise; then as many new uniform
        random points as the stage had are drawn, the heights are checked on them (they were
        not fitted on them), and they join the fitting points.

        ``adam`` is pyOMT's method, kept as the baseline: Adam on the gradient at fixed Sobol
        points, which are doubled (and the step scaled by ``decay``) after ``patience``
        iterations without a better gradient norm; each doubling is checked the same way.

        **Converged means converged on independent points.** A check measures the cells on
        ``m`` uniform random points the heights were never fitted on. Their total variation
        includes the check's own sampling noise: a perfect fit still shows about
        ``sum_i sqrt(2 nu_i (1 - nu_i) / (pi m)) / 2`` (:func:`noise_tv`, about ``0.4 / sqrt(c)``
        for ``c`` points per cell). The fit's error is estimated as
        ``sqrt(raw^2 - noise^2)`` (independent errors add in quadrature) and the fit stops when
        that estimate is at most ``tolerance``, on a check whose noise is at most twice the
        tolerance. The final report measures once more, on ``check_points_per_cell * N`` new
        random points (at least enough for that noise bound).

        Args:
            tolerance: Held-out total variation to stop at (0.02: 2% of the source mass sent
                to a wrong code).
            method: ``newton`` or ``adam`` (pyOMT's method, for comparison).
            max_iterations: Stop after this many iterations whatever the error.
            max_seconds: Stop after this much time whatever the error (``None``: no limit).
            points_per_cell: Monte Carlo points per unit of mean mass at the start (newton: 8,
                adam: 20).
            max_points: No more fitting points than this.
            check_points_per_cell: Independent points per unit of mean mass of the final check.
            candidates: Cells kept per Monte Carlo point between full passes (see
                :class:`_Candidates`: the measures are exact whatever the number; more
                candidates mean fewer full passes and more memory, ``12 x points x candidates``
                bytes).
            lr: Adam's step on the heights (adam); by default a tenth of the median distance
                between neighbouring points.
            patience: Iterations without a better gradient norm before a stall (adam).
            decay: Factor of Adam's step at each stall (1: pyOMT's constant step).
            progress: Called as ``progress(iteration, total_variation, points)`` each iteration.

        Returns:
            A :class:`FitReport`.
        """
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        if method not in ("newton", "adam"):
            raise ValueError(f"unknown OT method {method!r}: choose 'newton' or 'adam'")
        started = time.perf_counter()
        run = _Run(self, tolerance, max_points, candidates, progress, started, max_seconds)
        start = points_per_cell if points_per_cell is not None else (8.0 if method == "newton" else 20.0)
        first = int(min(max(start * self.num_points, 4096), max_points))
        if method == "newton":
            h = _newton(run, first, max_iterations)
        else:
            h = _adam(run, first, max_iterations, lr if lr is not None else 0.1 * self.neighbour_distance(),
                      patience, decay)
        self.heights = h
        if run.converged:
            check = run.checks[-1]  # on points the heights were never fitted on
        else:
            check = self.check(h, int(max(check_points_per_cell * self.num_points, 10_000)), seed_offset=10**6)
        return FitReport(
            iterations=run.iteration,
            total_variation=run.history[-1] if run.history else math.inf,
            converged=run.converged,
            seconds=time.perf_counter() - started,
            monte_carlo_points=run.total,
            held_out_error=check.max_relative_error,
            held_out_tv=check.estimate,
            history=run.history,
            full_passes=run.full_passes,
            method=method,
            held_out_raw_tv=check.raw,
            held_out_noise=check.noise,
            held_out_points=check.points,
            checks=run.checks,
            adam_from=run.switched_at,
        )

    def check(self, heights: Tensor | None = None, points: int = 1_000_000, seed_offset: int = 0) -> Check:
        """The cells measured on ``points`` uniform random points (independent of any fit).

        Returns:
            A :class:`Check`: raw and noise-corrected total variation, the noise level, and
            the largest relative error of a cell.
        """
        h = self.heights if heights is None else heights
        counts = torch.zeros(self.num_points, dtype=self.points.dtype, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed + 7919 + seed_offset)
        chunk = self.score_chunk
        for start in range(0, points, chunk):
            x = _uniform(min(chunk, points - start), self.dim, generator, self.points)
            counts += torch.bincount(self.cells(x, h), minlength=self.num_points).to(counts.dtype)
        return _measure(counts / points - self.masses, self.masses, points)

    # --- the generation map ----------------------------------------------------------------

    def facet_angles(self, i: Tensor, j: Tensor) -> Tensor:
        """The angle (radians) between the potential's facets over cells ``i`` and ``j``: the
        angle between the normals ``(y_i, -1)`` and ``(y_j, -1)``, with the codes ``y`` in their
        own coordinates (pyOMT's test; its thresholds were tuned there)."""
        codes = self.codes
        ones = -torch.ones(self.num_points, 1, dtype=codes.dtype, device=self.device)
        normals = torch.cat([codes, ones], dim=1)
        normals = normals / normals.norm(dim=1, keepdim=True)
        cos = (normals[i] * normals[j]).sum(-1).clamp(-1.0, 1.0)
        return torch.arccos(cos)

    @property
    def codes(self) -> Tensor:
        """The target points in their own coordinates (``points`` are centred and scaled)."""
        return self.points / self.scale + self.shift

    def neighbour_radius(self, m: int) -> Tensor:
        """Each code's distance to its ``m``-th nearest other code, shape ``(N,)`` (cached)."""
        cached = getattr(self, "_radius", None)
        if cached is not None and cached[0] == m:
            return cached[1]
        n = self.num_points
        m = max(1, min(m, n - 1))
        radius = torch.empty(n, dtype=self.points.dtype, device=self.device)
        rows = max(1, 4_000_000 // n)
        for start in range(0, n, rows):
            block = torch.cdist(self.points[start:start + rows], self.points,  # (rows, N)
                                compute_mode="donot_use_mm_for_euclid_dist")
            block[torch.arange(len(block)), torch.arange(start, start + len(block))] = math.inf
            radius[start:start + rows] = block.topk(m, dim=1, largest=False).values[:, -1]
        self._radius = (m, radius)
        return radius

    def facet_ratio(self, i: Tensor, j: Tensor, singular_neighbours: int = 10) -> Tensor:
        """``|y_i - y_j|`` over ``y_i``'s distance to its ``singular_neighbours``-th nearest code:
        the calibrated test calls the facet between cells ``i`` and ``j`` singular above 1."""
        radius = self.neighbour_radius(singular_neighbours)
        return (self.points[i] - self.points[j]).norm(dim=-1) / radius[i].clamp_min(1e-30)

    def singular(self, i: Tensor, j: Tensor, angle_threshold: float | None = None,
                 singular_neighbours: int = 10) -> Tensor:
        """Whether the facet between cells ``i`` and ``j`` is singular (see :meth:`generate`)."""
        if angle_threshold is not None:
            return self.facet_angles(i, j) > angle_threshold
        # The m-th neighbour itself is often a candidate: a relative slack keeps it regular
        # whatever the rounding.
        return self.facet_ratio(i, j, singular_neighbours) > 1 + 1e-5

    def generate(
        self,
        n: int,
        k: int = 20,
        angle_threshold: float | None = None,
        weight: float | None = None,
        generator: torch.Generator | None = None,
        return_cells: bool = False,
        singular_neighbours: int = 10,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """``n`` new points from the extended OT map (in the points' own coordinates).

        Each source point ``x ~ mu`` lies in the cell of ``y_i``. Among its ``k - 1`` next best
        cells ``j`` (by score), the best one whose facet with ``i``'s is not singular is its
        neighbour across a regular boundary, and the new point is ``(1 - w) y_i + w y_j``; when
        there is none, ``x`` sits next to singular boundaries only and maps to ``y_i`` itself:
        the map never fills a gap of the support.

        **Which facets are singular.** The angle between the facets' normals ``(y_i, -1)`` and
        ``(y_j, -1)`` grows with ``|y_i - y_j|``, but its size depends on the codes' scale and
        position, so no fixed threshold means the same for two encoders. By default
        (``angle_threshold: None``) the test is scale-free and calibrated on the codes
        themselves: the facet between ``i`` and ``j`` is singular when ``y_j`` is farther from
        ``y_i`` than ``y_i``'s ``singular_neighbours``-th nearest code, i.e. when its angle is
        larger than the angles to the code's own near neighbours. Inside a connected piece of
        the support the cells' neighbours are near codes; across a gap they are not. A number
        for ``angle_threshold`` gives pyOMT's fixed test instead, on the codes in their own
        coordinates.

        Args:
            n: How many points.
            k: Cells examined per source point (its own and ``k - 1`` neighbours).
            angle_threshold: Largest facet angle (radians) taken as non-singular, pyOMT's test
                (0.7 for its CelebA codes, 0.2 / 0.4 for its toy sets); ``None``: the
                calibrated test above.
            weight: ``w`` fixed (pyOMT: 0.75: every new point three quarters of the way from
                one code to another, so at most ``N (k - 1)`` distinct points); ``None`` (the
                default) draws ``w ~ U(0, 1)`` per point, so every sample is a new point.
            generator: Random source of the box points and of ``w``.
            return_cells: Also return ``(i, j)``: each point's own cell and the neighbour it
                interpolated towards (``j == i`` where it did not).
            singular_neighbours: The calibrated test's neighbour rank (see above).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        k = max(1, min(k, self.num_points))
        x = torch.rand(n, self.dim, generator=generator, device="cpu", dtype=torch.float64)
        x = (x - 0.5).to(self.device, self.points.dtype)
        own = torch.empty(n, dtype=torch.long, device=self.device)
        other = torch.empty(n, dtype=torch.long, device=self.device)
        nearest_singular = 0
        chunk = self.score_chunk
        for start in range(0, n, chunk):
            top = self.scores(x[start:start + chunk]).topk(k, dim=1).indices  # (b, k)
            i = top[:, :1].expand_as(top)
            ok = ~self.singular(i, top, angle_threshold, singular_neighbours)
            ok[:, 0] = False
            if k > 1:
                nearest_singular += int((~ok[:, 1]).sum())
            first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros_like(top[:, 0]))
            own[start:start + chunk] = top[:, 0]
            other[start:start + chunk] = torch.where(ok.any(1), top.gather(1, first[:, None])[:, 0], top[:, 0])
        if weight is None:
            w = torch.rand(n, 1, generator=generator, dtype=torch.float64).to(self.device, self.points.dtype)
        else:
            w = torch.full((n, 1), float(weight), dtype=self.points.dtype, device=self.device)
        new = (1 - w) * self.points[own] + w * self.points[other]
        new = new / self.scale + self.shift
        self.last_generation = GenerationStats(
            samples=n, rejected_share=nearest_singular / max(n, 1),
            kept_share=float((own == other).float().mean()) if n else 0.0,
        )
        return (new, own, other) if return_cells else new

    def potential(self, x: Tensor) -> Tensor:
        """The Brenier potential ``u_h(x) = max_i <x, y_i> + h_i`` (convex, piecewise linear)."""
        return torch.cat(
            [self.scores(x[s:s + self.chunk]).max(1).values for s in range(0, x.shape[0], self.chunk)]
        )

    # --- saving ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (checkpoints load with ``weights_only=True``)."""
        return {
            "points": self.points, "masses": self.masses, "heights": self.heights,
            "shift": self.shift, "scale": self.scale, "chunk": self.chunk, "seed": self.seed,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SemiDiscreteOT:
        """Rebuilds a fitted map from :meth:`state_dict`."""
        ot = cls.__new__(cls)
        ot.points, ot.masses, ot.heights = state["points"], state["masses"], state["heights"]
        ot.shift, ot.scale = state["shift"], state["scale"]
        ot.chunk, ot.seed = int(state["chunk"]), int(state["seed"])
        ot.dim = int(ot.points.shape[1])
        return ot

    def to(self, device: torch.device | str) -> SemiDiscreteOT:
        """Moves every tensor to ``device`` (in place); returns ``self``."""
        for name in ("points", "masses", "heights", "shift", "scale"):
            setattr(self, name, getattr(self, name).to(device))
        return self
