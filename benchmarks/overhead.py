"""Steps per second of genlit's GAN step against a hand-written PyTorch loop.

Both loops do the same mathematics on the same networks, batches and data loader: a
non-saturating discriminator update on detached fakes, then a generator update on fresh noise
with the discriminator's gradients switched off. genlit runs through a real ``Trainer`` with a
CSV logger on (metrics logged every ``log_every_n_steps``). Timing starts after a warm-up and
covers the steady state only (no start-up, no teardown).

    python benchmarks/overhead.py                 # both cases, 7 pairs of runs, a table (1 thread)
    python benchmarks/overhead.py --clock wall    # wall-clock time, all threads (quiet machine)

By default time is the CPU time of this process (``time.process_time``) on one torch thread:
other programs on a shared machine do not inflate it. With several threads, process time also
counts the threads' spin-waiting, which differs between the two loops (on 2 threads it put the
DCGAN case at 0.90x while the wall clock said 1.07x), so ``--threads N`` above 1 goes with
``--clock wall`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from genlit._compat import skip_failing_nvml_probe
from genlit.losses import non_saturating_discriminator_loss, non_saturating_generator_loss
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

CLOCK: Callable[[], float] = time.process_time


def make_case(name: str, steps: int) -> tuple[Callable, DataLoader]:
    """Network factory and a data loader with at least ``steps`` batches."""
    torch.manual_seed(0)
    if name == "dcgan-28":
        batch = 64
        data = torch.rand(batch * (steps + 1), 1, 28, 28) * 2 - 1

        def nets():
            return DCGANGenerator(100, 1, 28, 64), DCGANDiscriminator(1, 28, 64)
    else:
        batch = 256
        data = torch.randn(batch * (steps + 1), 2)

        def nets():
            return MLPGenerator(2, 2, 64, 2), MLPDiscriminator(2, 64, 2)

    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=False, drop_last=True)
    return nets, loader


def adam(params):
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def raw_loop(nets, loader: DataLoader, warmup: int, steps: int) -> float:
    """The loop a user would write by hand; returns steps (generator steps) per second."""
    generator, discriminator = nets()
    opt_g, opt_d = adam(generator.parameters()), adam(discriminator.parameters())
    latent = generator.latent_dim
    start = 0.0
    for i, (real,) in enumerate(loader):
        if i == warmup:
            start = CLOCK()
        if i == warmup + steps:
            break
        with torch.no_grad():
            fake = generator(torch.randn(real.shape[0], latent))
        loss_d = non_saturating_discriminator_loss(discriminator(real), discriminator(fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        discriminator.requires_grad_(False)
        loss_g = non_saturating_generator_loss(discriminator(generator(torch.randn(real.shape[0], latent))))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        discriminator.requires_grad_(True)
    return steps / (CLOCK() - start)


class _Timer(Callback):
    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.stop = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = CLOCK()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.steps - 1:
            self.stop = CLOCK()


def genlit_loop(nets, loader: DataLoader, warmup: int, steps: int, log_every: int) -> float:
    """The same step through genlit's GAN and a Lightning Trainer; generator steps per second."""
    generator, discriminator = nets()
    model = GAN(generator, discriminator, adam, adam, loss="non_saturating")
    timer = _Timer(warmup, steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=warmup + steps,
            limit_val_batches=0, logger=CSVLogger(tmp), log_every_n_steps=log_every,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(model, train_dataloaders=loader)
    return steps / (timer.stop - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (per case default)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: 1 with --clock process, all with wall)")
    parser.add_argument("--log-every", type=int, default=50, help="Trainer(log_every_n_steps)")
    parser.add_argument("--cases", nargs="+", default=["dcgan-28", "tiny-mlp"])
    parser.add_argument("--clock", choices=["process", "wall"], default="process")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    if args.threads is None and args.clock == "process":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    rows = []
    for case in args.cases:
        steps = args.steps or (60 if case == "dcgan-28" else 1500)
        nets, loader = make_case(case, args.warmup + steps)
        raw, ours = [], []
        for i in range(args.repeats):  # interleaved, so drift hits both alike; either goes first
            if i % 2:
                ours.append(genlit_loop(nets, loader, args.warmup, steps, args.log_every))
            raw.append(raw_loop(nets, loader, args.warmup, steps))
            if not i % 2:
                ours.append(genlit_loop(nets, loader, args.warmup, steps, args.log_every))
        # A shared machine's speed drifts by tens of percent between runs: each genlit run is
        # compared with the raw run beside it, and the table gives the median ratio.
        ratios = [g / r for r, g in zip(raw, ours, strict=True)]
        rows.append((case, statistics.median(raw), statistics.median(ours), statistics.median(ratios),
                     min(ratios), max(ratios)))

    print(f"\nthreads={torch.get_num_threads()}, clock={args.clock}, log_every_n_steps={args.log_every}, "
          f"medians of {args.repeats} interleaved pairs of runs, steps = generator steps (1 D + 1 G update)\n")
    print("| case | raw PyTorch steps/s | genlit steps/s | genlit / raw (median of pairs) | range |")
    print("|---|---:|---:|---:|---|")
    for case, r, g, ratio, low, high in rows:
        print(f"| {case} | {r:.1f} | {g:.1f} | {ratio:.3f}x | {low:.2f}-{high:.2f} |")


if __name__ == "__main__":
    skip_failing_nvml_probe()  # as the genlit command does: no NVML retry per Adam step
    main()
