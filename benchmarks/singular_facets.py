"""The singular-facet tests of AE-OT's generation map on 10 well-separated clusters in 8-d.

10,000 codes: 10 Gaussian clusters (centres ~ N(0, 16 I), unit spread), the OT map fitted to
them, then 10,000 samples of the extended map with each test. A sample made between codes of
two clusters fills a gap of the support; one made between two codes of one cluster is a new
code inside it; the rest are training codes returned unchanged. Tests:

* ``box 0.7 rad``: the facet angle on codes scaled into the box ``[-0.5, 0.5]^d`` (genlit's
  former default: the scale set by the largest coordinate, so every angle is small);
* ``pyOMT 0.7 rad``: the same angle on the codes in their own coordinates;
* ``calibrated``: genlit's default (singular when the other code is farther than the 10th
  nearest code).

    python benchmarks/singular_facets.py
"""

from __future__ import annotations

import argparse
import time

import torch

from genlit.ot import SemiDiscreteOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    centers = torch.randn(10, 8, generator=g) * 4
    labels = torch.arange(args.codes) % 10
    codes = centers[labels] + torch.randn(args.codes, 8, generator=g)
    ot = SemiDiscreteOT(codes, seed=args.seed)
    started = time.perf_counter()
    report = ot.fit(tolerance=args.tolerance, max_seconds=args.max_seconds)
    print(f"{args.codes:,} codes in 10 clusters, 8-d: OT fit {time.perf_counter() - started:.0f} s, held-out "
          f"total variation {report.held_out_tv:.4f} ({'converged' if report.converged else 'not converged'})\n")
    print("| test | between two clusters | new code inside a cluster | code unchanged | next to a singular facet |")
    print("|---|---:|---:|---:|---:|")
    box = ot.facet_angles
    for name, settings in (("box 0.7 rad", "box"), ("pyOMT 0.7 rad", {"angle_threshold": 0.7}), ("calibrated", {})):
        if settings == "box":  # the former test: normals from the box-scaled codes
            def scaled(i, j, ot=ot):
                ones = -torch.ones(ot.num_points, 1)
                normals = torch.cat([ot.points, ones], 1)
                normals = normals / normals.norm(dim=1, keepdim=True)
                return torch.arccos((normals[i] * normals[j]).sum(-1).clamp(-1, 1))
            ot.facet_angles = scaled
            settings = {"angle_threshold": 0.7}
        _, own, other = ot.generate(args.samples, generator=torch.Generator().manual_seed(args.seed),
                                    return_cells=True, **settings)
        ot.facet_angles = box
        moved = own != other
        between = float((moved & (labels[own] != labels[other])).float().mean())
        within = float((moved & (labels[own] == labels[other])).float().mean())
        print(f"| {name} | {between:.2%} | {within:.1%} | {float((~moved).float().mean()):.1%} | "
              f"{ot.last_generation.rejected_share:.1%} |")


if __name__ == "__main__":
    main()
