"""Generator steps per second of genlit's GAN and WGAN-GP steps against hand-written PyTorch loops.

Every loop does the same mathematics on the same networks, batches and data: one discriminator
(critic) update per batch on detached fakes, and every ``k``-th batch (1 for the GAN, 5 for
WGAN-GP) a generator update on fresh noise with the discriminator's gradients off. The batches
are already on the device, as genlit's in-memory datamodules hand them over, so the loops
time the step and not a data pipeline. The variants:

* ``raw``: the eager loop a user would write by hand;
* ``raw graph`` (CUDA only): the same loop with each phase captured once as a CUDA graph and
  replayed (capturable Adam), the floor of what a captured step can cost;
* ``genlit``: genlit's model through a real ``Trainer`` with a CSV logger (metrics every
  ``log_every_n_steps``): its own step, which calls ``backward()`` and ``step()`` directly;
* ``genlit, Lightning hooks``: the same with a callback that overrides a step hook, which makes
  genlit take Lightning's ``manual_backward`` and ``LightningOptimizer.step`` (what every
  step cost before genlit called them directly);
* ``genlit captured`` (CUDA only): ``capture=True``.

Timing covers the steady state only (after ``--warmup`` batches; on CUDA with a
synchronisation at both ends). The variants run interleaved, in a rotating order, ``--repeats``
times, and the table gives medians of the runs and of the per-repeat ratios with their range,
since a shared machine's speed drifts between runs.

    python benchmarks/overhead.py                                   # CPU, 1 thread, process time
    python benchmarks/overhead.py --device cuda --batch-sizes 64 256 1024
    python benchmarks/overhead.py --device cuda --profile           # where genlit's step spends its time

On a CPU time is this process's CPU time (``time.process_time``) on one torch thread, which
other programs do not inflate; ``--clock wall`` on a quiet machine for more threads. On CUDA it
is always the wall clock.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from genlit._compat import skip_failing_nvml_probe
from genlit.losses import non_saturating_discriminator_loss, non_saturating_generator_loss
from genlit.models import GAN, WGANGP
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

CLOCK: Callable[[], float] = time.process_time
DEVICE = torch.device("cpu")
N_CRITIC = 5
GP_WEIGHT = 10.0


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def now() -> float:
    sync()
    return CLOCK()


def networks(net: str, model: str) -> tuple[nn.Module, nn.Module]:
    """The generator and discriminator of a case (no batch norm in a penalised critic)."""
    if net == "dcgan-28":
        return DCGANGenerator(100, 1, 28, 64), DCGANDiscriminator(1, 28, 64, batch_norm=model == "gan")
    return MLPGenerator(2, 2, 64, 2), MLPDiscriminator(2, 64, 2)


def make_batches(net: str, batch: int, count: int) -> list[tuple[Tensor]]:
    """``count`` batches of fixed random data, on the device."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, 28, 28) if net == "dcgan-28" else (2,)
    data = torch.rand(count * batch, *shape, generator=generator) * 2 - 1
    data = data.to(DEVICE)
    return [(data[i * batch:(i + 1) * batch],) for i in range(count)]


def adam_for(model: str) -> Callable[..., torch.optim.Optimizer]:
    betas = (0.5, 0.999) if model == "gan" else (0.0, 0.9)
    return functools.partial(torch.optim.Adam, lr=2e-4 if model == "gan" else 1e-4, betas=betas)


def penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Gulrajani et al.'s gradient penalty, written out."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return GP_WEIGHT * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def raw_phases(model: str, generator: nn.Module, discriminator: nn.Module, batch: int):
    """The two phases of the hand-written loop (losses only; the caller steps)."""
    latent = generator.latent_dim

    def d_loss(real: Tensor) -> Tensor:
        with torch.no_grad():
            fake = generator(torch.randn(real.shape[0], latent, device=DEVICE))
        if model == "gan":
            return non_saturating_discriminator_loss(discriminator(real), discriminator(fake))
        return discriminator(fake).mean() - discriminator(real).mean() + penalty(discriminator, real, fake)

    def g_loss() -> Tensor:
        out = discriminator(generator(torch.randn(batch, latent, device=DEVICE)))
        return non_saturating_generator_loss(out) if model == "gan" else -out.mean()

    return d_loss, g_loss


def raw_loop(net: str, model: str, batches: list, warmup: int, steps: int) -> float:
    """The loop a user would write by hand; generator steps per second."""
    torch.manual_seed(0)
    generator, discriminator = (m.to(DEVICE) for m in networks(net, model))
    adam = adam_for(model)
    opt_g, opt_d = adam(generator.parameters()), adam(discriminator.parameters())
    k = 1 if model == "gan" else N_CRITIC
    d_loss, g_loss = raw_phases(model, generator, discriminator, batches[0][0].shape[0])
    start, done = 0.0, 0
    for i, (real,) in enumerate(batches):
        if i == warmup * k:
            start, done = now(), 0
        loss = d_loss(real)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        if (i + 1) % k == 0:
            discriminator.requires_grad_(False)
            loss = g_loss()
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            discriminator.requires_grad_(True)
            done += 1
            if i >= warmup * k and done == steps:
                break
    return steps / (now() - start)


def raw_graph_loop(net: str, model: str, batches: list, warmup: int, steps: int) -> float:
    """The hand-written loop with each phase a CUDA graph (capturable Adam); generator steps/s."""
    torch.manual_seed(0)
    generator, discriminator = (m.to(DEVICE) for m in networks(net, model))
    adam = adam_for(model)
    opt_g = adam(generator.parameters(), capturable=True)
    opt_d = adam(discriminator.parameters(), capturable=True)
    k = 1 if model == "gan" else N_CRITIC
    d_loss, g_loss = raw_phases(model, generator, discriminator, batches[0][0].shape[0])
    static = batches[0][0].clone()

    def d_phase() -> None:
        loss = d_loss(static)
        loss.backward()
        opt_d.step()

    def g_phase() -> None:
        discriminator.requires_grad_(False)
        g_loss().backward()
        opt_g.step()
        discriminator.requires_grad_(True)

    stream = torch.cuda.Stream(DEVICE)
    stream.wait_stream(torch.cuda.current_stream(DEVICE))
    with torch.cuda.stream(stream):  # warm-up on the capture stream: optimizer state, cuDNN choices
        for _ in range(3):
            opt_d.zero_grad(set_to_none=True)
            d_phase()
            opt_g.zero_grad(set_to_none=True)
            g_phase()
    torch.cuda.current_stream(DEVICE).wait_stream(stream)
    graphs = []
    for optimizer, phase in ((opt_d, d_phase), (opt_g, g_phase)):
        optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            phase()
        graphs.append(graph)
    d_graph, g_graph = graphs
    start, done = 0.0, 0
    for i, (real,) in enumerate(batches):
        if i == warmup * k:
            start, done = now(), 0
        static.copy_(real)
        d_graph.replay()
        if (i + 1) % k == 0:
            g_graph.replay()
            done += 1
            if i >= warmup * k and done == steps:
                break
    return steps / (now() - start)


class _Batches:
    """The batches as one iterable (Lightning reads a plain list as a list of dataloaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Timer(Callback):
    """Times generator steps ``warmup`` to ``warmup + steps`` of a genlit run."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.stop = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = pl_module.generator_updates
        if done == self.warmup and not self.start:
            self.start = now()
        if done == self.warmup + self.steps and not self.stop:
            self.stop = now()
            trainer.should_stop = True


class _StepHook(Callback):
    """Overrides a step hook: genlit then takes Lightning's backward and optimizer step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pass


def genlit_model(net: str, model: str, capture: bool) -> Any:
    torch.manual_seed(0)
    generator, discriminator = networks(net, model)
    adam = adam_for(model)
    if model == "gan":
        return GAN(generator, discriminator, adam, adam, loss="non_saturating", capture=capture)
    return WGANGP(generator, discriminator, adam, adam, n_critic=N_CRITIC, gp_weight=GP_WEIGHT, capture=capture)


def genlit_loop(net: str, model: str, batches: list, warmup: int, steps: int, log_every: int,
                hooks: bool = False, capture: bool = False) -> float:
    """The same step through genlit's model and a Lightning Trainer; generator steps per second."""
    module = genlit_model(net, model, capture)
    timer = _Timer(warmup, steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator=DEVICE.type if DEVICE.type == "cpu" else "gpu", devices=1, max_epochs=1,
            limit_val_batches=0, logger=CSVLogger(tmp), log_every_n_steps=log_every,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[timer, *([_StepHook()] if hooks else [])],
        )  # fmt: skip
        trainer.fit(module, train_dataloaders=_Batches(batches))
    if not timer.stop:
        raise RuntimeError(f"{len(batches)} batches were too few for {warmup} + {steps} generator steps")
    return steps / (timer.stop - timer.start)


def profile_genlit(net: str, model: str, batch: int, steps: int, log_every: int) -> None:
    """Prints where genlit's eager step spends host and device time, and its host-device syncs."""
    from torch.profiler import ProfilerActivity, profile

    k = 1 if model == "gan" else N_CRITIC
    batches = make_batches(net, batch, (20 + steps + 2) * k)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    genlit_loop(net, model, batches, 10, 10, log_every)  # warm caches, cuDNN choices
    with profile(activities=activities) as prof:
        genlit_loop(net, model, batches, 0, steps, log_every)
    sort = "self_cuda_time_total" if DEVICE.type == "cuda" else "self_cpu_time_total"
    print(f"\n{model} {net} batch {batch}: {steps} generator steps under torch.profiler\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if DEVICE.type == "cuda":
        print(prof.key_averages().table(sort_by=sort, row_limit=15))
    syncs = {e.key: e.count for e in prof.key_averages()
             if any(s in e.key for s in ("Synchronize", "aten::item", "aten::_local_scalar_dense", "cudaMemcpy"))}
    print("host-device synchronisations and copies:", syncs or "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--models", nargs="+", default=["gan", "wgan-gp"], choices=["gan", "wgan-gp"])
    parser.add_argument("--nets", nargs="+", default=None, choices=["dcgan-28", "tiny-mlp"],
                        help="default: both on a CPU, dcgan-28 on CUDA")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="default: 64 for dcgan-28 and 256 for tiny-mlp on a CPU; 64 256 1024 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed generator steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="generator steps before timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: 1 with --clock process, all with wall)")
    parser.add_argument("--log-every", type=int, default=50, help="Trainer(log_every_n_steps)")
    parser.add_argument("--clock", choices=["process", "wall"], default=None,
                        help="default: process on a CPU, wall on CUDA")
    parser.add_argument("--profile", action="store_true", help="profile genlit's eager step instead")
    args = parser.parse_args()

    global CLOCK, DEVICE
    DEVICE = torch.device(args.device)
    cuda = DEVICE.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    clock = args.clock or ("wall" if cuda else "process")
    if cuda and clock == "process":
        parser.error("--clock process measures the CPU only: on CUDA use the wall clock")
    CLOCK = time.process_time if clock == "process" else time.perf_counter
    if args.threads is None and clock == "process":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    nets = args.nets or (["dcgan-28"] if cuda else ["dcgan-28", "tiny-mlp"])

    if args.profile:
        for model in args.models:
            for net in nets:
                for batch in args.batch_sizes or [64]:
                    profile_genlit(net, model, batch, args.steps or 50, args.log_every)
        return

    variants: dict[str, Callable[..., float]] = {
        "raw": raw_loop,
        "genlit": functools.partial(genlit_loop, log_every=args.log_every),
        "genlit, Lightning hooks": functools.partial(genlit_loop, log_every=args.log_every, hooks=True),
    }
    if cuda:
        variants["raw graph"] = raw_graph_loop
        variants["genlit captured"] = functools.partial(genlit_loop, log_every=args.log_every, capture=True)
    rows = []
    for model in args.models:
        k = 1 if model == "gan" else N_CRITIC
        for net in nets:
            sizes = args.batch_sizes or ([64, 256, 1024] if cuda else [64 if net == "dcgan-28" else 256])
            for batch in sizes:
                heavy = net == "dcgan-28" and not cuda
                steps = args.steps or (30 if heavy else 300 if not cuda else 200)
                warmup = args.warmup or (5 if heavy else 20)
                batches = make_batches(net, batch, (warmup + steps + 2) * k)
                runs: dict[str, list[float]] = {name: [] for name in variants}
                names = list(variants)
                for repeat in range(args.repeats):  # rotating order: drift hits every variant alike
                    for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                        runs[name].append(variants[name](net, model, batches, warmup, steps))
                rows.append((model, net, batch, runs))
                print(f"{model} {net} batch {batch}: " + ", ".join(
                    f"{name} {statistics.median(v):.1f}" for name, v in runs.items()), flush=True)

    device = torch.cuda.get_device_name(DEVICE) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\n{device}, torch {torch.__version__}, clock={clock}, log_every_n_steps={args.log_every}, "
          f"medians of {args.repeats} interleaved runs; generator steps/s (GAN: 1 D + 1 G update, "
          f"WGAN-GP: {N_CRITIC} critic + 1 G)\n")
    columns = list(variants)
    ratios = [("genlit / raw", "genlit", "raw"), ("Lightning hooks / genlit", "genlit, Lightning hooks", "genlit")]
    if cuda:
        ratios += [("captured / genlit", "genlit captured", "genlit"), ("raw graph / raw", "raw graph", "raw")]
    print("| model | network | batch | " + " | ".join(columns) + " | " + " | ".join(r[0] for r in ratios) + " |")
    print("|---|---|---:|" + "---:|" * len(columns) + "---|" * len(ratios))
    for model, net, batch, runs in rows:
        cells = [f"{statistics.median(runs[c]):.1f}" for c in columns]
        for _, top, bottom in ratios:
            per_repeat = [a / b for a, b in zip(runs[top], runs[bottom], strict=True)]
            cells.append(f"{statistics.median(per_repeat):.3f}x ({min(per_repeat):.2f}-{max(per_repeat):.2f})")
        print(f"| {model} | {net} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    skip_failing_nvml_probe()  # as the genlit command does: no NVML retry per Adam step
    main()
