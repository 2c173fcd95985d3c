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

The cell measures are estimated by Monte Carlo with Sobol points, ``chunk`` source points
against all targets at a time (memory ``N x chunk`` scores); ``h`` follows Adam on the
estimated gradient, is kept centred, and the number of Monte Carlo points doubles whenever the
gradient norm has not improved for ``patience`` iterations (pyOMT's rule, with its 30). Between
full passes each point is scored against its best few cells only, with a bound that keeps the
measures exact (:class:`_Candidates`). The fit stops when the total variation between the cell
measures and the masses on the current points is at most ``tolerance``; the report gives it,
and the largest relative cell error, on independent points too.

:class:`SemiDiscreteOT` is pure torch (no Lightning) and runs on the device its points are on.
Its generation map (:meth:`SemiDiscreteOT.generate`) is AE-OT's: a source point's own cell and
its ``k`` best neighbouring cells; across a facet whose normals ``(y_i, -1)`` and ``(y_j, -1)``
meet at an angle below ``angle_threshold`` the support is taken to be connected and a new point
between ``y_i`` and ``y_j`` is made; across a larger angle (a singular facet) it never
interpolates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genlit.errors import GenlitError


@dataclass
class FitReport:
    """What :meth:`SemiDiscreteOT.fit` did, for logs and benchmarks."""

    iterations: int
    total_variation: float
    """``sum_i |mu(W_i) - nu_i| / 2`` on the last iteration's points."""
    converged: bool
    seconds: float
    monte_carlo_points: int
    """Points per iteration at the end (doubled on each stall)."""
    held_out_error: float
    """``max_i |mu(W_i) - nu_i| / nu_i`` measured on independent points."""
    held_out_tv: float
    """The total variation measured on those points."""
    history: list[float] = field(default_factory=list)
    """The total variation of every iteration."""
    full_passes: int = 0
    """Iterations that scored every point against every cell (the rest used the candidates)."""


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
        for s in range(0, m, ot.chunk):
            top = ot.scores(x[s:s + ot.chunk], heights).topk(k, dim=1)
            self.cand[s:s + ot.chunk] = top.indices
            self.dots[s:s + ot.chunk] = top.values - heights[top.indices]
            self.bound[s:s + ot.chunk] = top.values[:, -1] if k < ot.num_points else -math.inf
        self.h0 = heights.clone()
        self.refreshes += 1

    def cells(self, heights: Tensor) -> Tensor:
        rise = float((heights - self.h0).max())
        best = (self.dots + heights[self.cand]).max(1)
        cells = self.cand.gather(1, best.indices[:, None])[:, 0]
        unsure = (best.values <= self.bound + rise).nonzero()[:, 0]
        if len(unsure) > self.refresh_share * len(cells):
            self.rebuild(heights)
            return self.cand[:, 0].clone()
        if len(unsure):
            cells[unsure] = self.ot.cells(self.x[unsure], heights)
        return cells


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
        for start in range(0, x.shape[0], self.chunk):
            out[start:start + self.chunk] = self.scores(x[start:start + self.chunk], heights).argmax(1)
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
        tolerance: float = 0.01,
        max_iterations: int = 5_000,
        lr: float | None = None,
        points_per_cell: float = 20.0,
        max_points: int = 2_000_000,
        patience: int = 30,
        decay: float = 0.5,
        check_points_per_cell: int = 100,
        max_seconds: float | None = None,
        candidates: int = 16,
        progress: Callable[[int, float, int], None] | None = None,
    ) -> FitReport:
        """Finds the heights: Adam on the energy's Monte Carlo gradient.

        As in pyOMT, the cells are measured on the same Sobol points every iteration, so the
        heights can settle on them; when the gradient norm has not improved for ``patience``
        iterations, the next ``2x`` as many Sobol points replace them and Adam's step shrinks
        by ``decay`` (pyOMT doubles the points after 30 iterations without improvement and
        keeps its step). The fit stops when the total variation between the cells' measures and
        the masses, ``sum_i |mu(W_i) - nu_i| / 2`` (the share of the source sent to a wrong
        point), is at most ``tolerance`` on the current points. The result is then measured on
        ``check_points_per_cell * N`` independent points: ``FitReport.held_out_error`` is the
        largest relative error of a cell there, ``held_out_tv`` the total variation. Both
        include the check's own Monte Carlo noise: with ``c`` points per cell a perfect fit
        still shows a total variation of about ``0.8 / sqrt(c)`` (0.08 for c = 100) in high
        dimensions, less in low ones, where Sobol points are more even than random ones.

        Args:
            tolerance: Total variation to stop at (0.01: 1% of the source mass misplaced).
            max_iterations: Stop after this many iterations whatever the error.
            lr: Adam's step on the heights; by default a tenth of the median distance between
                neighbouring points (:meth:`neighbour_distance`): the heights that reshape a cell
                are of that order, whether the points are spread evenly or in tight clusters.
            points_per_cell: Monte Carlo points per unit of mean mass at the start (at least
                10,000 points).
            max_points: No more points per iteration than this after doublings.
            patience: Iterations without a better gradient norm before a stall.
            decay: Factor of the step at each stall (1: pyOMT's constant step).
            check_points_per_cell: Points per unit of mean mass of the final, independent check.
            max_seconds: Stop after this much time whatever the error (``None``: no limit).
            candidates: Cells kept per Monte Carlo point between full passes (see
                :class:`_Candidates`: the measures are exact whatever the number; more
                candidates mean fewer full passes and more memory, ``12 x points x candidates``
                bytes).
            progress: Called as ``progress(iteration, total_variation, points)`` each iteration.

        Returns:
            A :class:`FitReport`.
        """
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        n = self.num_points
        points = int(min(max(points_per_cell * n, 10_000), max_points))
        step = lr if lr is not None else 0.1 * self.neighbour_distance()
        h = self.heights.clone()
        m, v = torch.zeros_like(h), torch.zeros_like(h)
        best_norm, bad, stage, used = math.inf, 0, 0, points
        history: list[float] = []
        started = time.perf_counter()
        tv, iteration, t = math.inf, 0, 0
        cache: _Candidates | None = None
        cache_stage, full_passes = stage, 0
        for iteration in range(1, max_iterations + 1):
            if cache is None or cache.x.shape[0] != points or cache_stage != stage:
                full_passes += cache.refreshes if cache is not None else 0
                cache = None  # free the last stage's points first
                cache = _Candidates(self, self._sobol(points, stage), h, candidates, refresh_share=0.05)
                cache_stage = stage
            counts = torch.bincount(cache.cells(h), minlength=n).to(h.dtype)
            grad = counts / points - self.masses
            tv = float(grad.abs().sum()) / 2
            history.append(tv)
            if progress is not None:
                progress(iteration, tv, points)
            if tv <= tolerance:
                break
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
            norm = float(grad.norm())
            if norm < best_norm:
                best_norm, bad = norm, 0
            else:
                bad += 1
                if bad > patience:
                    # Stalled: the points' granularity or the step's overshoot is the limit.
                    # More points lower the first, a smaller step the second.
                    stage, points = used, min(2 * points, max_points)
                    used, bad, best_norm = stage + points, 0, math.inf
                    step *= decay
            t += 1
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).add_(grad * grad, alpha=0.001)
            h -= step * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-12)
            h -= h.mean()
        full_passes += cache.refreshes if cache is not None else 0
        self.heights = h
        check = int(max(check_points_per_cell * n, 10_000))
        held_out = self.cell_measures(check, h, used) - self.masses
        return FitReport(
            iterations=iteration,
            total_variation=tv,
            converged=tv <= tolerance,
            seconds=time.perf_counter() - started,
            monte_carlo_points=points,
            held_out_error=float((held_out.abs() / self.masses).max()),
            held_out_tv=float(held_out.abs().sum()) / 2,
            history=history,
            full_passes=full_passes,
        )

    # --- the generation map ----------------------------------------------------------------

    def facet_angles(self, i: Tensor, j: Tensor) -> Tensor:
        """The angle (radians) between the potential's facets over cells ``i`` and ``j``: the
        angle between the normals ``(y_i, -1)`` and ``(y_j, -1)``."""
        ones = -torch.ones(self.num_points, 1, dtype=self.points.dtype, device=self.device)
        normals = torch.cat([self.points, ones], dim=1)
        normals = normals / normals.norm(dim=1, keepdim=True)
        cos = (normals[i] * normals[j]).sum(-1).clamp(-1.0, 1.0)
        return torch.arccos(cos)

    def generate(
        self,
        n: int,
        k: int = 20,
        angle_threshold: float = 0.7,
        weight: float | None = 0.75,
        generator: torch.Generator | None = None,
        return_cells: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """``n`` new points from the extended OT map (in the points' own coordinates).

        Each source point ``x ~ mu`` lies in the cell of ``y_i``. Among its ``k - 1`` next best
        cells ``j`` (by score), the best one whose facet meets ``i``'s at an angle of at most
        ``angle_threshold`` is its neighbour across a non-singular boundary, and the new point is
        ``(1 - w) y_i + w y_j``; when none is, ``x`` sits next to singular boundaries only and
        maps to ``y_i`` itself: the map never fills a gap of the support.

        Args:
            n: How many points.
            k: Cells examined per source point (its own and ``k - 1`` neighbours).
            angle_threshold: Largest facet angle (radians) taken as non-singular. pyOMT uses
                0.7 for CelebA codes and 0.2 / 0.4 for the toy sets (at its own scale).
            weight: ``w``; pyOMT's 0.75 by default; ``None`` draws ``w ~ U(0, 1)`` per point.
            generator: Random source of the box points and of ``w``.
            return_cells: Also return ``(i, j)``: each point's own cell and the neighbour it
                interpolated towards (``j == i`` where it did not).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        k = max(1, min(k, self.num_points))
        x = torch.rand(n, self.dim, generator=generator, device="cpu", dtype=torch.float64)
        x = (x - 0.5).to(self.device, self.points.dtype)
        own = torch.empty(n, dtype=torch.long, device=self.device)
        other = torch.empty(n, dtype=torch.long, device=self.device)
        for start in range(0, n, self.chunk):
            top = self.scores(x[start:start + self.chunk]).topk(k, dim=1).indices  # (b, k)
            i = top[:, :1].expand_as(top)
            ok = self.facet_angles(i, top) <= angle_threshold
            ok[:, 0] = False
            first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros_like(top[:, 0]))
            own[start:start + self.chunk] = top[:, 0]
            other[start:start + self.chunk] = torch.where(
                ok.any(1), top.gather(1, first[:, None])[:, 0], top[:, 0]
            )
        if weight is None:
            w = torch.rand(n, 1, generator=generator, dtype=torch.float64).to(self.device, self.points.dtype)
        else:
            w = torch.full((n, 1), float(weight), dtype=self.points.dtype, device=self.device)
        new = (1 - w) * self.points[own] + w * self.points[other]
        new = new / self.scale + self.shift
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
