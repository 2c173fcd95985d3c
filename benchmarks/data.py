"""Data time per step on real MNIST: the in-memory path against a standard DataLoader.

Prints a markdown table: milliseconds of data time per batch (fetch, move to the device, convert
to float in [-1, 1]), the batches per second that alone would allow, and that time as a
fraction of one DCGAN training step (discriminator and generator update) timed in the same run.
The loaders are timed on their own, without a model running beside them, so the fraction says
how much a step would slow down if data loading did not overlap with compute.

    python benchmarks/data.py --steps 300 --batch-size 64 --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import transforms as T

from datamodules.images import MNIST

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    batches: Iterator[Tensor], steps: int, device: torch.device, warmup: int = 5
) -> float:
    """Mean seconds per batch over ``steps`` batches, after ``warmup`` (worker start-up)."""
    for _ in range(warmup):
        next(batches)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    sync(device)
    return (time.perf_counter() - start) / steps


def forever(make_loader: Callable[[], DataLoader]) -> Iterator:
    while True:
        yield from make_loader()


def in_memory_batches(dm: MNIST, device: torch.device) -> Iterator[Tensor]:
    # The same calls the Trainer makes: move the index batch, then gather on the device.
    for batch in forever(dm.train_dataloader):
        batch = dm.transfer_batch_to_device(batch, device, 0)
        images, _ = dm.on_after_batch_transfer(batch, 0)
        yield images


def standard_batches(
    root: Path, batch_size: int, num_workers: int, device: torch.device
) -> Iterator[Tensor]:
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    dataset = torchvision.datasets.MNIST(str(root), train=True, transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda",
    )
    for images, _ in forever(lambda: loader):
        yield images.to(device, non_blocking=True)


def make_networks(latent_dim: int) -> tuple[nn.Module, nn.Module, str]:
    try:
        from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
    except ImportError:
        # Stand-in until genlit.networks.dcgan exists: DCGAN's shape at 28x28, width 64.
        generator = nn.Sequential(
            nn.Linear(latent_dim, 128 * 7 * 7),
            nn.Unflatten(1, (128, 7, 7)),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),  # (B, 64, 14, 14)
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 4, 2, 1),  # (B, 1, 28, 28)
            nn.Tanh(),
        )
        discriminator = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1),  # (B, 64, 14, 14)
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1),  # (B, 128, 7, 7)
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(128 * 7 * 7, 1),
            nn.Flatten(0),  # (B,)
        )
        return generator, discriminator, "stand-in conv net"
    generator = DCGANGenerator(latent_dim=latent_dim, channels=1, image_size=28, width=64)
    discriminator = DCGANDiscriminator(channels=1, image_size=28, width=64)
    return generator, discriminator, "genlit.networks.dcgan"


def time_dcgan_step(real: Tensor, steps: int, device: torch.device, latent_dim: int = 100):
    """Mean seconds of one non-saturating GAN step: a D update, then a G update."""
    generator, discriminator, source = make_networks(latent_dim)
    generator, discriminator = generator.to(device), discriminator.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones = torch.ones(len(real), device=device)
    zeros = torch.zeros(len(real), device=device)

    def step() -> None:
        z = torch.randn(len(real), latent_dim, device=device)
        fake = generator(z)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="batches timed per loader")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=DEFAULT_DATA,
        help="folder holding MNIST/raw/*.gz (copied to a temporary folder)",
    )
    parser.add_argument("--model-steps", type=int, default=30, help="DCGAN steps timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 avoids thread-pool stalls on a busy CPU",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not (args.data_root / "MNIST" / "raw").is_dir():
        raise SystemExit(f"no MNIST/raw under {args.data_root.resolve()}; pass --data-root")

    with tempfile.TemporaryDirectory() as tmp:
        # torchvision reads extracted files next to the .gz files: work on a writable copy.
        root = Path(tmp)
        shutil.copytree(args.data_root / "MNIST", root / "MNIST")
        start = time.perf_counter()
        dm = MNIST(str(root), download=False, batch_size=args.batch_size)
        dm.setup("fit")
        setup_s = time.perf_counter() - start

        in_memory_s = time_batches(in_memory_batches(dm, device), args.steps, device)
        rows = [("in-memory (index batches, gather on device)", in_memory_s)]
        for workers in (0, 2):
            batches = standard_batches(root, args.batch_size, workers, device)
            seconds = time_batches(batches, args.steps, device)
            rows.append((f"torchvision MNIST + ToTensor + Normalize, {workers} workers", seconds))
            batches.close()  # shuts the workers down before the next measurement

        real = next(in_memory_batches(dm, device))
        step_s, source = time_dcgan_step(real, args.model_steps, device)

    # Other processes on a small CPU stall every multi-threaded kernel; the load says so.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU cores: {os.cpu_count()}, load average: {load}")
    print(
        f"device: {device}, torch threads: {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.steps} batches per loader; in-memory setup (decode 60k once): {setup_s:.2f} s"
    )
    print(f"DCGAN step ({source}, D + G update, {args.model_steps} steps): {step_s * 1e3:.1f} ms\n")
    print("| data path | data ms/step | steps/s (data only) | data / DCGAN step |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.3f} | {1 / seconds:,.0f} | {seconds / step_s:.1%} |")


if __name__ == "__main__":
    main()
