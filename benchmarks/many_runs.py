"""Total generator steps per second of 1, 2, 4, 8 concurrent ``genlit fit`` processes on one device.

A study of many small runs (``genlit study run --workers-per-device N``) packs several trainings
onto one GPU: small networks leave most of it idle, so N processes together may make nearly
N times the steps of one, until the device (or the host's cores) is full. Each process here is
a real ``genlit fit`` of a DCGAN for 28x28 images (``configs/digits/nsgan.yaml`` with its
images upscaled to 28x28, batch 64), started at the same moment as the others; a callback in
each (:class:`StepRate`) times generator steps ``--warmup`` to ``--warmup + --steps`` and writes
the rate to a file, so start-up and teardown are not counted. The table gives the sum of the
processes' rates and the speed-up over one process, median over ``--repeats``.

    python benchmarks/many_runs.py --device cuda                    # 1, 2, 4, 8 processes
    python benchmarks/many_runs.py --device cpu --processes 1 2 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]


class StepRate(Callback):
    """Writes the generator steps per second between two generator steps to ``out`` (JSON).

    Args:
        out: The file the rate is written to.
        warmup: The generator step timing starts at.
        steps: How many generator steps are timed.
    """

    def __init__(self, out: str, warmup: int = 20, steps: int = 200) -> None:
        self.out, self.warmup, self.steps = out, warmup, steps
        self.start: float | None = None

    def _now(self, pl_module) -> float:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = pl_module.generator_steps_done
        if done == self.warmup and self.start is None:
            self.start = self._now(pl_module)
        elif self.start is not None and done == self.warmup + self.steps:
            seconds = self._now(pl_module) - self.start
            Path(self.out).write_text(json.dumps({"steps": self.steps, "seconds": seconds}))
            trainer.should_stop = True
            self.start = float("inf")  # written once


def command(out: Path, device: str, warmup: int, steps: int, root: Path) -> list[str]:
    accelerator = ["--trainer.accelerator=cpu"] if device == "cpu" else ["--trainer.accelerator=gpu", "--trainer.devices=1"]
    timer = json.dumps({"class_path": "benchmarks.many_runs.StepRate",
                        "init_args": {"out": str(out), "warmup": warmup, "steps": steps}})
    return [
        sys.executable, "-m", "genlit", "fit", "--config", str(REPO / "configs/digits/nsgan.yaml"),
        "--data.init_args.image_size=28", "--data.init_args.batch_size=64",
        "--model.init_args.generator.init_args.image_size=28",
        "--model.init_args.discriminator.init_args.image_size=28",
        # One measurement: no validation, samples, FID or checkpoints inside the timed steps.
        "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]", f"--trainer.callbacks+={timer}", "--trainer.enable_checkpointing=false",
        f"--trainer.logger.init_args.save_dir={root}", f"--generator_steps={warmup + steps + 10}",
        *accelerator,
    ]  # fmt: skip


def run(processes: int, device: str, warmup: int, steps: int) -> float:
    """Total generator steps/s of ``processes`` concurrent runs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        if device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        outs = [root / f"rate{i}.json" for i in range(processes)]
        started = [
            subprocess.Popen(command(out, device, warmup, steps, root / f"run{i}"), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i, out in enumerate(outs)
        ]
        for process in started:
            _, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"genlit fit failed ({process.returncode}): {err.strip().splitlines()[-1:]}")
        rates = [json.loads(out.read_text()) for out in outs]
        return sum(r["steps"] / r["seconds"] for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--warmup", type=int, default=20, help="generator steps before timing")
    parser.add_argument("--steps", type=int, default=300, help="timed generator steps per process")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
        name = torch.cuda.get_device_name(0)
    else:
        name = f"CPU ({os.cpu_count()} cores), one thread per process"
    totals: dict[int, list[float]] = {n: [] for n in args.processes}
    for _ in range(args.repeats):  # interleaved: drift hits every count alike
        for n in args.processes:
            totals[n].append(run(n, args.device, args.warmup, args.steps))
            print(f"{n} process(es): {totals[n][-1]:.1f} generator steps/s in all", flush=True)
    one = statistics.median(totals[args.processes[0]]) / args.processes[0]
    print(f"\n{name}; DCGAN-28 NS-GAN, batch 64, {args.steps} timed generator steps per process, "
          f"median of {args.repeats}\n")
    print("| processes | generator steps/s, all together | per process | vs one process |")
    print("|---:|---:|---:|---:|")
    for n, values in totals.items():
        total = statistics.median(values)
        print(f"| {n} | {total:.1f} | {total / n:.1f} | {total / one:.2f}x |")


if __name__ == "__main__":
    main()
