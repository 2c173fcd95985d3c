"""The lecture's FID table: every GAN variant trained for the same budget, then measured alike.

Each (dataset, model) trains from its config in ``configs/DATASET/MODEL.yaml`` for
``--generator_steps`` generator steps (a separate ``genlit fit`` process per run), and its
final weights are measured with ``genlit evaluate``'s code: ``--num_samples`` samples against
the test split (the training digits for ``digits``), with the dataset's own genlit feature
network. The numbers compare the rows of one table; they are not Inception FIDs.

    python benchmarks/fid_table.py --data-root data                        # the full table
    python benchmarks/fid_table.py --datasets digits --generator_steps 500  # minutes on a CPU
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = ["mmgan", "nsgan", "lsgan", "wgan", "wgan_gp"]
NAMES = {
    "mmgan": "MM GAN",
    "nsgan": "NS GAN",
    "lsgan": "LSGAN",
    "wgan": "WGAN",
    "wgan_gp": "WGAN-GP",
}
# dataset -> (feature network, reference split)
FEATURES = {
    "digits": ("digits", "train"),
    "mnist": ("mnist", "test"),
    "fashion_mnist": ("fashion_mnist", "test"),
}


def train(dataset: str, model: str, args: argparse.Namespace) -> Path:
    """Runs ``genlit fit`` for one config and returns its last checkpoint."""
    config = REPO / "configs" / dataset / f"{model}.yaml"
    version = f"steps{args.generator_steps}_seed{args.seed}"
    command = [
        sys.executable,
        "-m",
        "genlit",
        "fit",
        "--config",
        str(config),
        f"--generator_steps={args.generator_steps}",
        f"--seed_everything={args.seed}",
        f"--trainer.logger.init_args.save_dir={args.out}",
        f"--trainer.logger.init_args.version={version}",
        "--trainer.enable_progress_bar=false",
    ]
    if dataset != "digits":
        command.append(f"--data.init_args.root={args.data_root}")
    subprocess.run(command, check=True, cwd=REPO)
    name = yaml.safe_load(config.read_text())["trainer"]["logger"]["init_args"]["name"]
    return Path(args.out) / name / version / "checkpoints" / "last.ckpt"


def measure(dataset: str, model: str, ckpt: Path, args: argparse.Namespace):
    from genlit.evaluate import build_datamodule, evaluate
    from genlit.sample import load_model

    config = yaml.safe_load((REPO / "configs" / dataset / f"{model}.yaml").read_text())
    overrides = [] if dataset == "digits" else [f"--data.init_args.root={args.data_root}"]
    features, split = FEATURES[dataset]
    return evaluate(
        build_datamodule(config["data"], overrides),
        model=load_model(ckpt),
        features=features,
        num_samples=args.num_samples,
        split=split,
        device=args.device,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["mnist", "fashion_mnist"], choices=sorted(FEATURES)
    )
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--generator_steps", type=int, default=5000)
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-root", default="data", help="folder holding MNIST/ and FashionMNIST/"
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "fid_table"), help="where the runs go")
    parser.add_argument(
        "--cache_dir", default=None, help="reference statistics (default ~/.cache/genlit/fid)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-training", action="store_true", help="measure existing runs only")
    args = parser.parse_args()

    rows = []
    for dataset in args.datasets:
        for model in args.models:
            start = time.perf_counter()
            ckpt = train(dataset, model, args) if not args.skip_training else None
            if ckpt is None:
                config = yaml.safe_load((REPO / "configs" / dataset / f"{model}.yaml").read_text())
                name = config["trainer"]["logger"]["init_args"]["name"]
                ckpt = (
                    Path(args.out)
                    / name
                    / f"steps{args.generator_steps}_seed{args.seed}"
                    / "checkpoints"
                    / "last.ckpt"
                )
            result = measure(dataset, model, ckpt, args)
            minutes = (time.perf_counter() - start) / 60
            kid = (
                f"{result.kid_mean:.3g} ± {result.kid_std:.2g}"
                if result.kid_mean is not None
                else "-"
            )
            rows.append(
                f"| {dataset} | {NAMES[model]} | {args.generator_steps} | {result.fid:.2f} | {kid} | {minutes:.1f} |"
            )
            print(f"{dataset} {model}: FID {result.fid:.2f}", flush=True)

    features = ", ".join(
        f"{d}: {FEATURES[d][0]} features vs {FEATURES[d][1]} split" for d in args.datasets
    )
    print(
        f"\nFID and KID of {args.num_samples} samples (capped at the real images), seed {args.seed}; {features}."
    )
    print("Genlit feature networks: compare rows of this table only, never with Inception FIDs.\n")
    print("| dataset | model | generator steps | FID | KID | minutes |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
