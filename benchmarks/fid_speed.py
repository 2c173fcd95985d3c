"""Seconds for one 10,000-sample FID (and KID) with the MNIST feature network, cache warm.

The generator is the DCGAN of ``configs/mnist/*.yaml`` (latent 100, width 64, 28x28), untrained:
the cost does not depend on the weights. The reference statistics of MNIST's test split are
computed first if the cache lacks them (not timed), then each timed run does what the FID
callback does at every evaluation: draw the samples in batches, extract features, update the
metrics, compute FID and KID. Generation and feature extraction are timed separately too.

    python benchmarks/fid_speed.py --data-root data            # MNIST in data/MNIST/raw
    python benchmarks/fid_speed.py --data-root data --threads 1
    python benchmarks/fid_speed.py --data-root data --copying   # also the data-copying figures

With ``--copying`` each repeat also runs the same evaluation with the copying figures of
:mod:`genlit.metrics.copying` against the 60,000 training images (interleaved with the plain
one), their held-out side read from its cache; the first, cold computation of that side (the
k-means and the test images' distances to the training set, once per dataset) is timed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from datamodules.images import MNIST
from genlit.metrics.features import load_features
from genlit.metrics.fid import FeatureDistances, generate_into, reference_statistics
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (writable)")
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--no_kid", action="store_true")
    parser.add_argument("--cache_dir", default=None, help="default: a temporary folder")
    parser.add_argument("--copying", action="store_true", help="also time the data-copying figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    scratch = None if args.cache_dir else tempfile.TemporaryDirectory(prefix="genlit_fid_")
    cache_dir = args.cache_dir or scratch.name

    torch.manual_seed(0)
    model = GAN(DCGANGenerator(100, 1, 28, 64), DCGANDiscriminator(1, 28, 64)).eval()
    datamodule = MNIST(root=args.data_root, download=True)

    def fresh(copying: bool = False) -> FeatureDistances:
        # Everything a new evaluation builds: the network and the metrics, the cache read.
        network = load_features("mnist")
        distances = FeatureDistances(network, (1, 28, 28), kid=not args.no_kid, copying=copying)
        stats = reference_statistics(datamodule, "test", distances, cache_dir)
        distances.set_reference(stats)
        if copying:
            from genlit.metrics.copying import copying_sides

            load = lambda split: reference_statistics(datamodule, split, distances, cache_dir)  # noqa: E731
            distances.set_copying(*copying_sides(datamodule, "test", stats, load))
        return distances

    start = time.perf_counter()
    fresh(copying=args.copying)
    print(f"reference statistics (cold cache): {time.perf_counter() - start:.1f} s")
    copying_times, copying_cold = [], None
    if args.copying:
        distances = fresh(copying=True)
        with torch.no_grad():
            generate_into(distances, model.sample, args.num_samples, args.batch_size)
        start = time.perf_counter()
        copied = distances.compute()
        copying_cold = time.perf_counter() - start

    totals, cpu, sampling, featuring = [], [], [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        distances = fresh()
        with torch.no_grad():
            generate_into(distances, model.sample, args.num_samples, args.batch_size)
        values = distances.compute()
        totals.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if args.copying:
            start = time.perf_counter()
            distances = fresh(copying=True)
            with torch.no_grad():
                generate_into(distances, model.sample, args.num_samples, args.batch_size)
            copied = distances.compute()
            copying_times.append(time.perf_counter() - start)

        with torch.no_grad():
            start = time.perf_counter()
            images = torch.cat(
                [model.sample(args.batch_size) for _ in range(args.num_samples // args.batch_size)]
            )
            sampling.append(time.perf_counter() - start)
            start = time.perf_counter()
            distances.features(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
            featuring.append(time.perf_counter() - start)

    kid = "" if args.no_kid else f", KID {values['kid_mean']:.4g}"
    print(
        f"FID {values['fid']:.4g}{kid} (untrained generator, {args.num_samples} samples, {args.threads} threads)"
    )
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in load)} (other processes share the cores)"
    )
    print("| part | median s | runs |")
    print("|---|---|---|")
    print(
        f"| whole evaluation, cache warm | {statistics.median(totals):.2f} | {', '.join(f'{t:.2f}' for t in totals)} |"
    )
    print(
        f"| CPU time of the whole evaluation (all threads) | {statistics.median(cpu):.2f} | {', '.join(f'{t:.2f}' for t in cpu)} |"
    )
    print(f"| of which generation | {statistics.median(sampling):.2f} | |")
    print(f"| of which MNIST features | {statistics.median(featuring):.2f} | |")
    if args.copying:
        extra = [c - t for c, t in zip(copying_times, totals, strict=True)]
        print(
            f"| the same evaluation with the copying figures | {statistics.median(copying_times):.2f} | "
            f"{', '.join(f'{t:.2f}' for t in copying_times)} |"
        )
        print(
            f"| of which the copying figures (difference, paired) | {statistics.median(extra):.2f} | "
            f"{', '.join(f'{t:.2f}' for t in extra)} |"
        )
        print(f"| their held-out side, cold (once per dataset, then cached) | {copying_cold:.2f} | |")
        print(f"copying figures of the untrained generator: C_T {copied['c_t']:.2f}, ratio {copied['nn_ratio']:.3f}")


if __name__ == "__main__":
    main()
