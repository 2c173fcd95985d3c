"""Mode collapse on images: class coverage on MNIST and mode counts on Stacked MNIST.

Every GAN loss (minimax, non-saturating, least squares, hinge, WGAN, WGAN-GP) and the
autoencoder family (AE with an ex-post Gaussian, VAE, WAE-MMD) trains from its config in
``configs/{mnist,stacked_mnist}/MODEL.yaml`` for the same ``--generator_steps`` (the training
of ``benchmarks/fid_table.py``: a ``genlit fit`` process per run, in-run evaluation off). The
final weights are then measured:

* MNIST: ``--num_samples`` samples against the test split: FID, precision, recall, density
  and coverage in genlit's MNIST classifier features, and the class coverage (classes covered
  by at least 1% of the samples, KL to the test labels' histogram, share of samples
  classified with probability >= 0.9), and the data-copying figures against the training
  split (C_T and the nearest-training ratio, :mod:`genlit.metrics.copying`).
* Stacked MNIST: 26,000 samples (PacGAN's protocol): modes covered out of 1,000 (one sample
  suffices), KL to the uniform histogram, confident share (product of the three channels'
  top probabilities >= 0.9).

    python benchmarks/mode_table.py --data-root DATA --jobs 2                  # both tables
    python benchmarks/mode_table.py --data-root DATA --datasets stacked_mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fid_table  # noqa: E402 - the same training as the FID table

REPO = fid_table.REPO
MODELS = ["mmgan", "nsgan", "lsgan", "hinge", "wgan", "wgan_gp", "ae", "vae", "wae_mmd"]
NAMES = dict(fid_table.NAMES, hinge="Hinge GAN")
STACKED_SAMPLES = 26000


def measure(dataset: str, model: str, ckpt: Path, args: argparse.Namespace, seed: int) -> dict:
    import torch

    from genlit.checkpoints import load_model
    from genlit.evaluate import build_datamodule, evaluate
    from genlit.metrics.classes import ClassCounter
    from genlit.metrics.fid import generate_into

    config = yaml.safe_load((REPO / "configs" / dataset / f"{model}.yaml").read_text())
    datamodule = build_datamodule(config["data"], [f"--data.init_args.root={args.data_root}"])
    network = load_model(ckpt)
    if dataset == "mnist":
        result = evaluate(
            datamodule, model=network, features="mnist", num_samples=args.num_samples,
            split="test", kid=False, device=args.device, seed=seed, cache_dir=args.cache_dir,
            precision_recall=True, classes="mnist", copying=True,
        )  # fmt: skip
        return dict(fid=result.fid, **result.manifold, classes=result.classes.classes,
                    kl=result.classes.kl, confident=result.classes.confident,
                    c_t=result.copying["c_t"], nn_ratio=result.copying["nn_ratio"])  # fmt: skip
    counter = ClassCounter("mnist", stacked=True).to(args.device)
    network = network.to(args.device).eval()
    torch.manual_seed(seed)
    generate_into(counter, network.sample, STACKED_SAMPLES, 500)
    stats = counter.compute()
    return dict(classes=stats.classes, kl=stats.kl, confident=stats.confident)


def run_one(dataset: str, model: str, seed: int, args: argparse.Namespace, quiet: Path) -> dict:
    start = time.perf_counter()
    run_args = argparse.Namespace(**{**vars(args), "seed": seed})
    ckpt = fid_table.checkpoint(dataset, model, args.generator_steps, run_args)
    if not (args.reuse and ckpt.exists()):
        ckpt = fid_table.train(dataset, model, args.generator_steps, run_args, quiet)
    values = measure(dataset, model, ckpt, args, seed)
    values.update(dataset=dataset, model=model, seed=seed, minutes=(time.perf_counter() - start) / 60)
    fid_table.log(f"{dataset} {model} seed {seed}: {values}")
    return values


def spread(rows: list[dict], key: str, digits: int) -> str:
    values = [row[key] for row in rows]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "stacked_mnist"], choices=["mnist", "stacked_mnist"])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--generator_steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num_samples", type=int, default=10000, help="MNIST samples")
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/")
    parser.add_argument("--out", default=str(REPO / "runs" / "mode_table"), help="where the runs go")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--reuse", action="store_true", help="measure runs already trained")
    args = parser.parse_args()
    # fid_table.train reads these
    args.data_root = str(Path(args.data_root).resolve())

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        quiet = Path(tmp) / "quiet.yaml"
        quiet.write_text(yaml.safe_dump(fid_table.QUIET))
        jobs = [(d, m, s) for d in args.datasets for m in args.models for s in args.seeds]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda job: run_one(*job, args, quiet), jobs))
    total = (time.perf_counter() - start) / 60
    seeds = ", ".join(map(str, args.seeds))
    print(f"\n{args.generator_steps} generator steps, seeds {seeds}; {args.jobs} run(s) at a time, "
          f"{args.threads} thread(s) each, on {args.device}; {total:.1f} min in all.")
    if "mnist" in args.datasets:
        print(f"\nMNIST, {args.num_samples} samples vs the 10,000 test images, genlit MNIST classifier:\n")
        print("| model | FID | precision | recall | density | coverage | classes | KL | confident | C_T | NN ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model in args.models:
            rows = [r for r in results if r["dataset"] == "mnist" and r["model"] == model]
            print(f"| {NAMES[model]} | {spread(rows, 'fid', 1)} | {spread(rows, 'precision', 3)} | "
                  f"{spread(rows, 'recall', 3)} | {spread(rows, 'density', 3)} | {spread(rows, 'coverage', 3)} | "
                  f"{spread(rows, 'classes', 1)} | {spread(rows, 'kl', 3)} | {spread(rows, 'confident', 3)} | "
                  f"{spread(rows, 'c_t', 2)} | {spread(rows, 'nn_ratio', 3)} |")
    if "stacked_mnist" in args.datasets:
        print(f"\nStacked MNIST, {STACKED_SAMPLES} samples, modes out of 1,000:\n")
        print("| model | modes | KL to uniform | confident |")
        print("|---|---:|---:|---:|")
        for model in args.models:
            rows = [r for r in results if r["dataset"] == "stacked_mnist" and r["model"] == model]
            print(f"| {NAMES[model]} | {spread(rows, 'classes', 1)} | {spread(rows, 'kl', 3)} | {spread(rows, 'confident', 3)} |")


if __name__ == "__main__":
    main()
