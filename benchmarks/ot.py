"""Semi-discrete OT solvers (genlit/ot.py) side by side: damped Newton against pyOMT's Adam.

For each (N, d) both methods fit the same codes (standard normal, what an autoencoder's latent
space looks like, or the codes of an AE-OT checkpoint with ``--codes``) with the same
tolerance and time limit. Each fit stops when a check on points it never used estimates its
total variation within the tolerance (the check's sampling noise taken out, see
``SemiDiscreteOT.fit``). Then one more check, the same for every method (the same
``--check-points-per-cell`` uniform random points), measures the result. One markdown row per
fit: iterations, seconds, cache builds, fitting points, whether it converged, the common
check's total variation (noise-corrected, raw and its noise) and the largest relative error of
a cell.

    python benchmarks/ot.py --sizes 1000 10000 --dims 2 16 64 --methods newton adam --max-seconds 300
    python benchmarks/ot.py --codes runs/mnist/aeot/version_0/checkpoints/last.ckpt --methods newton adam
"""

from __future__ import annotations

import argparse
import platform

import torch

from genlit.ot import SemiDiscreteOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 60000])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--methods", nargs="+", default=["newton", "adam"], choices=["newton", "adam"])
    parser.add_argument("--codes", default=None, help="an AE-OT checkpoint: fit its map's codes instead")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit per fit")
    parser.add_argument("--check-points-per-cell", type=float, default=100.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"tolerance: held-out total variation {args.tolerance}; time limit {args.max_seconds:.0f} s per fit; "
          f"common check: {args.check_points_per_cell:g} uniform points per cell\n")
    print("| codes | N | d | method | iterations | seconds | cache builds | fitting points | converged | "
          "held-out TV | raw (noise) | max rel. error |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|")
    cases = []
    if args.codes:
        state = torch.load(args.codes, map_location="cpu", weights_only=True)["genlit_ot"]
        codes = state["points"] / state["scale"] + state["shift"]
        cases.append(("checkpoint", codes))
    else:
        for n in args.sizes:
            for d in args.dims:
                cases.append(("normal", torch.randn(n, d, generator=torch.Generator().manual_seed(args.seed))))
    for label, codes in cases:
        for method in args.methods:
            ot = SemiDiscreteOT(codes.to(device).float(), seed=args.seed)
            report = ot.fit(tolerance=args.tolerance, method=method, max_seconds=args.max_seconds)
            check = ot.check(points=int(args.check_points_per_cell * ot.num_points), seed_offset=2**20)
            n, d = codes.shape
            print(f"| {label} | {n:,} | {d} | {method} | {report.iterations} | {report.seconds:.1f} | "
                  f"{report.full_passes} | {report.monte_carlo_points:,} | {'yes' if report.converged else 'no'} | "
                  f"{check.estimate:.4f} | {check.raw:.4f} ({check.noise:.4f}) | {check.max_relative_error:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
