"""AE + ex-post Gaussian, AE-OT and AE-OT-GAN on one autoencoder: FID side by side.

Given a finished AE-OT run (``configs/DATASET/aeot.yaml``) and, optionally, AE-OT-GAN runs
started from it, measures with genlit's feature network of the dataset (``genlit evaluate``'s
code; 10,000 samples against the test split, the training digits for ``digits``):

* the AE-OT checkpoint sampling its ex-post Gaussian (``sampler: gaussian``): the AE row;
* the same checkpoint sampling its OT map: the AE-OT row;
* each AE-OT-GAN checkpoint (``--gan NAME=PATH``, e.g. the ablations without a loss term).

Prints one markdown table. The numbers compare the rows of one table; they are not Inception FIDs.

    python benchmarks/aeot_fid.py --dataset mnist --data-root DATA \\
        --aeot runs/mnist/aeot/version_0/checkpoints/last.ckpt \\
        --gan "AE-OT-GAN=runs/mnist/aeot_gan/version_0/checkpoints/last.ckpt"
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import yaml

from genlit.checkpoints import load_model
from genlit.evaluate import build_datamodule, evaluate

REPO = Path(__file__).resolve().parents[1]
FEATURES = {"digits": ("digits", "train"), "mnist": ("mnist", "test"), "fashion_mnist": ("fashion_mnist", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(FEATURES), required=True)
    parser.add_argument("--data-root", default="data", help="the datamodule's root (not for digits)")
    parser.add_argument("--aeot", required=True, help="the AE-OT checkpoint")
    parser.add_argument("--gan", action="append", default=[], metavar="NAME=PATH",
                        help="an AE-OT-GAN checkpoint and its row's name (repeatable)")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    config = yaml.safe_load((REPO / "configs" / args.dataset / "aeot.yaml").read_text())
    overrides = [] if args.dataset == "digits" else [f"--data.init_args.root={args.data_root}"]
    features, split = FEATURES[args.dataset]

    def fid(model, name: str) -> str:
        result = evaluate(
            build_datamodule(config["data"], overrides), model=model, features=features,
            num_samples=args.num_samples, split=split, device=args.device, seed=args.seed,
            cache_dir=args.cache_dir,
        )
        return f"| {name} | {result.fid:.2f} | {result.num_samples:,} | {result.seconds:.0f} |"

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"{args.dataset}: genlit features {features}, {split} split; device {args.device} ({name})\n")
    print("| sampler | FID | samples | seconds |")
    print("|---|---:|---:|---:|")
    aeot = load_model(args.aeot)
    aeot.sampler = "gaussian"
    print(fid(aeot, "AE + ex-post Gaussian"), flush=True)
    aeot.sampler = "ot"
    print(fid(aeot, "AE-OT"), flush=True)
    for entry in args.gan:
        row, _, path = entry.partition("=")
        print(fid(load_model(path), row), flush=True)


if __name__ == "__main__":
    main()
