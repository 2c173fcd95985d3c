"""One GLANN checkpoint, looked at: FID of its samples and of its GLO reconstructions, and a grid.

The samples are ``G(T(e) / ||T(e)||)``; the reconstructions ``G(z_i)`` of codes of training
images (what IMLE could reach at best, by hitting the codes exactly). Both are measured with
the dataset's genlit feature network against the split the FID table uses, from one seed.

    python benchmarks/glann_check.py CKPT --dataset mnist --data-root DATA --grid docs/mnist_glann.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from glann_recipe import Reconstructions  # benchmarks/ is on the path of a script run from it

REPO = Path(__file__).resolve().parents[1]
FEATURES = {"digits": ("digits", "train"), "mnist": ("mnist", "test"), "fashion_mnist": ("fashion_mnist", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--dataset", default="mnist", choices=sorted(FEATURES))
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None, help="where to save 64 samples as an 8x8 PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from torchvision.utils import save_image

    from genlit.checkpoints import load_model
    from genlit.evaluate import build_datamodule, evaluate

    config = yaml.safe_load((REPO / "configs" / args.dataset / "glann.yaml").read_text())
    overrides = [] if args.dataset == "digits" else [f"--data.init_args.root={args.data_root}"]
    datamodule = build_datamodule(config["data"], overrides)
    datamodule.setup("fit")
    trained = datamodule._splits["train"][1]  # the positions the GLO stage trained on
    model = load_model(args.ckpt).eval()
    features, split = FEATURES[args.dataset]
    for name, source in (("samples", model), ("reconstructions", Reconstructions(model, torch.as_tensor(trained)))):
        result = evaluate(datamodule, model=source, features=features, num_samples=args.num_samples, split=split,
                          kid=False, seed=args.seed)
        print(f"{name}: FID {result.fid:.2f}", flush=True)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        norms = model.mapper(torch.randn(4096, model.noise_dim)).norm(dim=1)
    print(f"mean norm of T(e): {norms.mean():.3f} (the codes: 1)")
    if args.grid:
        torch.manual_seed(args.seed)
        save_image(model.sample(64), args.grid, nrow=8, normalize=True, value_range=(-1, 1), padding=1)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
