"""The lecture's "weak regularizer" table: ELBO surgery of VAEs with 2-, 10- and 20-D latents on MNIST.

Trains ``configs/mnist/vae_latent{2,10,20}.yaml`` (fully connected 784-512-512-d encoder and
decoder, Bernoulli decoder on dynamically binarised MNIST, batch 128, Adam 1e-3) for a fixed
budget of ``--epochs`` epochs each (7 by default: 2,730 steps of 128 images), then prints, for the 10,000
held-out training images, the ELBO, the average KL and its split into mutual information
I(x; z) and marginal KL(q(z) || p(z)) (Hoffman & Johnson, 2016), next to the lecture's numbers.
The mutual-information estimate cannot exceed log 10,000 = 9.21 nats (the lecture's, from the
60,000 training images, log 60,000 = 11.0); see ``genlit.metrics.elbo``.

Needs the real MNIST files: ``--root`` must hold ``MNIST/raw/*.gz`` (default ``../shared/data``);
they are copied to a temporary folder first, because torchvision extracts them next to
themselves. The runs go to ``--workers`` processes of ``--threads`` threads each.

    python benchmarks/vae_latents.py                 # about 8 minutes on 2 CPU cores
    python benchmarks/vae_latents.py --epochs 2      # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Hoffman & Johnson (2016), Table 1, as quoted by the lecture: ELBO, avg. KL, mutual info, marg. KL.
LECTURE = {
    2: (-129.63, 7.41, 7.20, 0.21),
    10: (-88.95, 19.17, 10.82, 8.35),
    20: (-87.45, 20.20, 10.67, 9.53),
}
KEYS = ("val/elbo", "val/kl", "val/mutual_info", "val/marginal_kl")


def train(latent: int, root: str, epochs: int, threads: int, out: str) -> dict[str, float]:
    """Trains one config in this process and returns its final validation metrics."""
    import torch

    torch.set_num_threads(threads)
    # The worker's sys.argv is the script's, which LightningCLI would warn about.
    warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
    from genlit.cli import GenlitCLI

    start = time.perf_counter()
    cli = GenlitCLI(
        args=[
            "fit",
            "--config",
            str(REPO / "configs" / "mnist" / f"vae_latent{latent}.yaml"),
            f"--data.init_args.root={root}",
            "--data.init_args.download=false",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.check_val_every_n_epoch={epochs}",  # one validation, at the end
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={out}/latent{latent}",
        ]
    )
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k in KEYS}
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def table(results: dict[int, dict[str, float]]) -> str:
    lines = [
        "| latent dim | ELBO (lecture) | avg KL (lecture) | mutual info (lecture) | marginal KL (lecture) |",
        "|---|---|---|---|---|",
    ]
    for latent, metrics in sorted(results.items()):
        cells = [
            f"{metrics[k]:.2f} ({ref:.2f})" for k, ref in zip(KEYS, LECTURE[latent], strict=True)
        ]
        lines.append(f"| {latent} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--latents", type=int, nargs="+", default=[2, 10, 20], choices=[2, 10, 20])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="keep the runs (grids, checkpoints) here")
    args = parser.parse_args()

    raw = Path(args.root) / "MNIST" / "raw"
    if not any(raw.glob("*.gz")):
        raise SystemExit(f"vae_latents: no MNIST files in {raw}; give --root with MNIST/raw/*.gz")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(raw, root / "MNIST" / "raw")
        out = args.out or str(Path(tmp) / "runs")
        # The biggest run first, so two workers finish together.
        order = sorted(args.latents, reverse=True)
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {
                d: pool.submit(train, d, str(root), args.epochs, args.threads, out) for d in order
            }
            results = {d: f.result() for d, f in futures.items()}
    total = time.perf_counter() - start
    print(
        f"\nVAE on binarised MNIST, {args.epochs} epochs each, 10,000 held-out images "
        f"(mutual information <= log 10,000 = 9.21); nats per image, ours (lecture):\n"
    )
    print(table(results))
    runs = ", ".join(f"{d}-D {results[d]['seconds']:.0f} s" for d in sorted(results))
    print(f"\nwall time {total:.0f} s ({runs}; {args.workers} workers x {args.threads} thread)")


if __name__ == "__main__":
    main()
