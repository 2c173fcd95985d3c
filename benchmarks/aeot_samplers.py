"""AE-OT's samplers on one autoencoder: which samples fall between digits, and their FID.

Given a finished AE-OT checkpoint (``configs/mnist/aeot.yaml`` or ``fashion_mnist``), draws
10,000 codes from each sampler of the same decoder:

* ``gaussian``: the ex-post Gaussian of the codes (the AE row of the README);
* ``ot``: the OT map with genlit's defaults (the calibrated singular-facet test, uniform weight);
* ``ot-pyomt``: the OT map with pyOMT's fixed test (``angle_threshold`` 0.7 rad on the codes,
  weight 0.75).

For each it prints the classifier's view of the decoded samples (genlit's classifier of the
dataset: the share labelled with probability at least 0.9, i.e. not between classes), for the
OT samplers the share of samples made between two training codes whose decodings the
classifier puts in different classes, the share next to a singular facet, the distinct codes,
and the FID (genlit features, 10,000 samples against the test split).

    python benchmarks/aeot_samplers.py --dataset mnist --data-root DATA --aeot AEOT.ckpt
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import yaml

from genlit.checkpoints import load_model
from genlit.evaluate import build_datamodule, evaluate
from genlit.metrics.classes import ClassCounter
from genlit.metrics.fid import to_uint8

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = {"gaussian": None, "ot": {}, "ot-pyomt": {"angle_threshold": 0.7, "weight": 0.75}}


@torch.no_grad()
def classify(counter: ClassCounter, model, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels, confidence = [], []
    for chunk in codes.split(1000):
        images = model.decode(chunk.to(model.device, model.latent_mean.dtype))
        predicted, probability = counter.classify(to_uint8(images))
        labels.append(predicted)
        confidence.append(probability)
    return torch.cat(labels), torch.cat(confidence)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"], required=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--aeot", required=True, help="the AE-OT checkpoint (with its fitted map)")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fid", action="store_true")
    args = parser.parse_args()
    model = load_model(args.aeot)
    ot = model.ot
    if ot is None:
        raise SystemExit(f"{args.aeot} holds no fitted OT map")
    counter = ClassCounter(args.dataset)
    train_labels, _ = classify(counter, model, ot.codes)  # the class of each training code's decoding
    config = yaml.safe_load((REPO / "configs" / args.dataset / "aeot.yaml").read_text())
    print(f"{args.dataset}: {ot.num_points:,} codes of dimension {ot.dim}; {args.num_samples:,} samples per "
          f"sampler, seed {args.seed}; CPU {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads\n")
    print("| sampler | confident (p >= 0.9) | made between two classes | next to a singular facet | "
          "distinct codes | FID |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, settings in SAMPLERS.items():
        generator = torch.Generator().manual_seed(args.seed)
        between = facet = "-"
        if settings is None:
            model.sampler = "gaussian"
            torch.manual_seed(args.seed)
            codes = model.prior_codes(args.num_samples).cpu()
        else:
            model.sampler = "ot"
            k = model.k
            codes, own, other = ot.generate(args.num_samples, k, generator=generator, return_cells=True,
                                            **{"singular_neighbours": model.singular_neighbours, **settings})
            codes = codes.cpu()
            between = f"{float((train_labels[own] != train_labels[other]).float().mean()):.2%}"
            facet = f"{ot.last_generation.rejected_share:.1%}"
            if name == "ot":
                model.angle_threshold, model.weight = None, None
            else:
                model.angle_threshold, model.weight = settings["angle_threshold"], settings["weight"]
        _, confidence = classify(counter, model, codes)
        distinct = len(torch.unique(codes, dim=0))
        fid = "-"
        if not args.no_fid:
            overrides = [f"--data.init_args.root={args.data_root}"]
            result = evaluate(build_datamodule(config["data"], overrides), model=model, features=args.dataset,
                              num_samples=args.num_samples, split="test", seed=args.seed)
            fid = f"{result.fid:.2f}"
        print(f"| {name} | {float((confidence >= 0.9).float().mean()):.1%} | {between} | {facet} | "
              f"{distinct:,} | {fid} |", flush=True)


if __name__ == "__main__":
    main()
