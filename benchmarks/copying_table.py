"""FID beside the data-copying figures, for several checkpoints of one dataset.

Each ``--ckpt NAME=PATH`` is measured with ``genlit evaluate``'s code: 10,000 samples in the
dataset's genlit features against the test split (the training digits' split for ``digits``),
and the copying figures of :mod:`genlit.metrics.copying` against the training split: C_T
(Meehan et al. 2020; well below 0 copying, near 0 generalising, above 0 underfitting), the
median distance to the nearest training image over the held-out images' (``NN ratio``), the
share of samples nearer the training set than the held-out images' 5th percentile, MiFID's
memorization distance (the held-out images' own in the header) and, for models that hold
per-image state and recorded its positions, the member test. ``NAME=PATH@gaussian`` samples an
AE-OT checkpoint from its ex-post Gaussian (the AE + ex-post Gaussian row on the same AE).
A first row measures real images no model trained on, the validation split (carved out of
the training images, ``val_fraction``), as if they were samples: what a model that
generalises perfectly would score (C_T's z grows with the square root of the sample count,
so compare its sign there, not its size, when the split is smaller than ``--num-samples``).

    python benchmarks/copying_table.py --dataset mnist --data-root DATA \\
        --ckpt "NS GAN=runs/mnist/nsgan/version_0/checkpoints/last.ckpt" \\
        --ckpt "AE + ex-post Gaussian=runs/mnist/aeot/version_0/checkpoints/last.ckpt@gaussian" \\
        --ckpt "AE-OT=runs/mnist/aeot/version_0/checkpoints/last.ckpt"
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
import yaml

from genlit.checkpoints import load_model
from genlit.evaluate import build_datamodule, evaluate
from genlit.metrics.fid import real_batches

REPO = Path(__file__).resolve().parents[1]
FEATURES = {"digits": ("digits", "train"), "mnist": ("mnist", "test"), "fashion_mnist": ("fashion_mnist", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(FEATURES), required=True)
    parser.add_argument("--data-root", default="data", help="the datamodule's root (not for digits)")
    parser.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH[@gaussian]",
                        help="a checkpoint and its row's name (repeatable)")
    parser.add_argument("--config", default=None, help="the data section's config (default configs/DATASET/aeot.yaml)")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    config_path = Path(args.config) if args.config else REPO / "configs" / args.dataset / "aeot.yaml"
    config = yaml.safe_load(config_path.read_text())
    overrides = [] if args.dataset == "digits" else [f"--data.init_args.root={args.data_root}"]
    features, split = FEATURES[args.dataset]

    def measure(name: str, model=None, images=None) -> str:
        result = evaluate(
            build_datamodule(config["data"], overrides), model=model, images=images, features=features,
            num_samples=args.num_samples, split=split, device=args.device, seed=args.seed,
            cache_dir=args.cache_dir, copying=True, kid=False,
        )
        c = result.copying
        member = f"{c['member_share']:.1%}" if "member_share" in c else "-"
        return (f"| {name} | {result.fid:.2f} | {c['c_t']:.2f} | {c['nn_ratio']:.3f} | {c['closer_share']:.1%} "
                f"| {c['memorization']:.4f} | {member} | {result.seconds:.0f} |"), c

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    rows, first = [], None
    if split != "train":  # digits: the held-out images are the val split itself
        with tempfile.TemporaryDirectory(prefix="genlit_heldout_") as folder:
            # Real images no model trained on, saved losslessly and measured like samples.
            from PIL import Image

            count = 0
            for batch in real_batches(build_datamodule(config["data"], overrides), "val"):
                for image in batch[: args.num_samples - count]:
                    Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(Path(folder) / f"{count:05d}.png")
                    count += 1
            row, first = measure(f"real images never trained on ({count:,} of the val split)", images=folder)
            rows.append(row)
    for entry in args.ckpt:
        name, _, path = entry.partition("=")
        path, _, sampler = path.partition("@")
        model = load_model(path)
        if sampler:
            model.sampler = sampler
        row, found = measure(name, model=model)
        rows.append(row)
        first = first or found
    print(f"{args.dataset}: genlit features {features}; FID against the {split} split; copying against "
          f"the training split; {args.num_samples:,} samples, seed {args.seed}; device {args.device} ({device}), "
          f"{torch.get_num_threads()} threads; the held-out images' own memorization distance "
          f"{first['memorization_held_out']:.4f}\n")
    print("| model | FID | C_T | NN ratio | closer than held-out 5% | memorization | member test | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row, flush=True)


if __name__ == "__main__":
    main()
