"""``genlit sample``: draw samples from a checkpoint into a PNG (an image grid or a scatter plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from genlit.checkpoints import load_model
from genlit.errors import GenlitError


def save_samples(samples: torch.Tensor, out: Path, nrow: int | None = None) -> None:
    """Writes images ``(N, C, H, W)`` in [-1, 1] as a grid, or 2-D points as a scatter plot."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if samples.dim() == 4:
        nrow = nrow or max(1, int(len(samples) ** 0.5))
        save_image(samples.float(), out, nrow=nrow, normalize=True, value_range=(-1, 1))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = samples.reshape(len(samples), -1).float().cpu()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:orange")
    ax.set_aspect("equal", adjustable="datalim")
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def sample_main(argv: list[str]) -> None:
    """Parses ``genlit sample`` arguments and writes the PNG."""
    parser = argparse.ArgumentParser(
        prog="genlit sample", description="Draw samples from a checkpoint written by genlit fit."
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint path (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--nrow", type=int, default=None, help="images per grid row")
    parser.add_argument("--device", default="cpu", help="device to sample on (default cpu)")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise GenlitError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise GenlitError(f"--out {out} must end in .png")
    model = load_model(args.ckpt).to(args.device)
    torch.manual_seed(args.seed)
    save_samples(model.sample(args.n).cpu(), out, args.nrow)
    print(f"genlit: wrote {args.n} samples of {type(model).__name__} to {out}")
