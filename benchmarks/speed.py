"""Training speed of genlit's speed options against eager fp32, side by side in one run.

NS-GAN and WGAN-GP with DCGAN networks on 28x28 images (scikit-learn's digits resized to MNIST's
size, so nothing needs downloading), batch 64. Each row trains ``--warmup`` batches (compilation
and allocator warm-up), then times ``--steps`` batches. A batch is one discriminator update, plus
one generator update every batch for the GAN and every 5th for WGAN-GP (n_critic = 5).

    python benchmarks/speed.py                          # CPU rows
    python benchmarks/speed.py --device cuda --steps 300  # adds 16-mixed; timings on the GPU
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from datamodules.images import Digits
from genlit._compat import skip_failing_nvml_probe
from genlit.models import GAN, WGANGP
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator


class Clock(Callback):
    """Times the batches after the warm-up ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.seconds = float("nan")
        self.batches = 0

    def _sync(self, trainer: Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batches == self.warmup:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        self._sync(trainer)
        if self.start is not None:
            self.seconds = time.perf_counter() - self.start


def build(model: str, fused: bool, **speed) -> GAN | WGANGP:
    generator = DCGANGenerator(latent_dim=100, channels=1, image_size=28, width=64)
    if model == "nsgan":
        adam = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999), fused=fused or None)
        discriminator = DCGANDiscriminator(channels=1, image_size=28, width=64, batch_norm=True)
        return GAN(generator, discriminator, adam, adam, loss="non_saturating", **speed)
    adam = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.9), fused=fused or None)
    critic = DCGANDiscriminator(channels=1, image_size=28, width=64, batch_norm=False)
    return WGANGP(generator, critic, adam, adam, gp_weight=10.0, n_critic=5, **speed)


def measure(model: str, args, precision="32-true", fused=False, in_memory=True, **speed) -> float:
    seed_everything(0, verbose=False)
    clock = Clock(args.warmup)
    steps_per_batch = 2 if model == "nsgan" else 1.2  # optimizer steps per batch
    trainer = Trainer(
        accelerator=args.device, devices=1, precision=precision,
        max_steps=round((args.warmup + args.steps) * steps_per_batch), max_epochs=-1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )
    data = Digits(image_size=28, batch_size=64, in_memory=in_memory, num_workers=0)
    trainer.fit(build(model, fused, **speed), datamodule=data)
    return (clock.batches - args.warmup) / clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=60, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=15, help="untimed batches per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=["nsgan", "wgan_gp"])
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[tuple[str, str, dict]] = []
    for model in args.models:
        rows.append((model, "eager fp32 (baseline)", {}))
        rows.append((model, "bf16-mixed", {"precision": "bf16-mixed"}))
        if args.device == "cuda":
            rows.append((model, "16-mixed", {"precision": "16-mixed"}))
        rows.append((model, "fused Adam", {"fused": True}))
        if model == "nsgan":
            rows.append((model, "channels_last", {"channels_last": True}))
            rows.append((model, "torchvision data path (not in memory)", {"in_memory": False}))
    if not args.skip_compile:  # last: compilation takes a while
        for model in args.models:
            rows.append((model, "compile_generator", {"compile_generator": True}))
            label = "compile_generator + compile_discriminator"
            if model == "wgan_gp":
                label += " (critic stays eager)"
            rows.append((model, label, {"compile_generator": True, "compile_discriminator": True}))

    results = []
    baseline: dict[str, float] = {}
    for model, label, options in rows:
        rate = measure(model, args, **options)
        baseline.setdefault(model, rate)
        results.append((model, label, rate, rate / baseline[model]))
        print(f"{model:8s} {label:55s} {rate:8.2f} batches/s", flush=True)

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{device}; batch 64, 28x28, DCGAN width 64; {args.steps} timed batches after {args.warmup}.")
    print("| model | option | batches/s | vs eager fp32 |")
    print("|---|---|---:|---:|")
    for model, label, rate, ratio in results:
        print(f"| {model} | {label} | {rate:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    skip_failing_nvml_probe()  # as the genlit command does: no NVML retry per Adam step
    main()
