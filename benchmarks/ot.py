"""Semi-discrete OT solver (genlit/ot.py): time and final error against N and d.

Prints a markdown table, one row per (N, d): the fit's iterations, seconds, whether it reached
the tolerance (total variation on its own Monte Carlo points) within the time limit, and the
errors measured on 100 independent points per cell: total variation and the largest relative
error of a cell. Targets are standard normal codes (what an autoencoder's latent space looks
like), on the fastest device unless --device is given.

    python benchmarks/ot.py --sizes 1000 10000 60000 --dims 2 16 64 --max-seconds 600
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
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time limit per fit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"tolerance: total variation {args.tolerance}; time limit {args.max_seconds:.0f} s per fit\n")
    print("| N | d | iterations | full passes | seconds | reached tolerance | held-out TV | held-out max relative error |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for n in args.sizes:
        for d in args.dims:
            codes = torch.randn(n, d, generator=torch.Generator().manual_seed(args.seed)).to(device)
            ot = SemiDiscreteOT(codes, chunk=8192)
            report = ot.fit(tolerance=args.tolerance, max_seconds=args.max_seconds)
            print(f"| {n:,} | {d} | {report.iterations} | {report.full_passes} | {report.seconds:.1f} | "
                  f"{'yes' if report.converged else 'no'} | {report.held_out_tv:.4f} | "
                  f"{report.held_out_error:.2f} |", flush=True)


if __name__ == "__main__":
    main()
