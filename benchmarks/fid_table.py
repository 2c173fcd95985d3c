"""The lecture's FID table: every model trained for the same budget, then measured alike.

Each (dataset, model) trains from its config in ``configs/DATASET/MODEL.yaml`` for
``--generator_steps`` generator (decoder) updates, times ``--budget``, in a separate
``genlit fit`` process with in-run validation and callbacks switched off (a critic takes its
``n_critic`` updates per generator update on top; GLANN takes as many whole GLO epochs as fit
in them, then ``IMLE_EPOCHS`` epochs of its small mapper). Its final weights are then measured with
``genlit evaluate``'s code: ``--num_samples`` samples against the test split (the training
digits for ``digits``), with the dataset's own genlit feature network, and beside it the
data-copying figures against the training split (:mod:`genlit.metrics.copying`: C_T, well
below 0 for copying, and the nearest-training ratio, 1 for real images). The numbers compare
the rows of one table; they are not Inception FIDs.

    python benchmarks/fid_table.py --data-root ../shared/data --jobs 2     # the table, 2 CPU cores
    python benchmarks/fid_table.py --data-root DATA --budget 10 --device cuda  # longer, on a GPU
    python benchmarks/fid_table.py --datasets digits --generator_steps 300    # minutes on a CPU
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = ["mmgan", "nsgan", "lsgan", "wgan", "wgan_gp", "began", "vae", "glann", "ae", "wae_mmd", "wae_gan"]
NAMES = {
    "mmgan": "GAN (minimax)",
    "nsgan": "NS GAN",
    "lsgan": "LSGAN",
    "wgan": "WGAN",
    "wgan_gp": "WGAN-GP",
    "began": "BEGAN",
    "glann": "GLANN",
    "vae": "VAE",
    "ae": "AE + ex-post Gaussian",
    "wae_mmd": "WAE-MMD",
    "wae_gan": "WAE-GAN",
}
# dataset -> (feature network, reference split)
FEATURES = {
    "digits": ("digits", "train"),
    "mnist": ("mnist", "test"),
    "fashion_mnist": ("fashion_mnist", "test"),
}
# Images in each dataset's training source (validation included), for GLANN's stage split.
TRAIN_IMAGES = {"digits": 1797, "mnist": 60000, "fashion_mnist": 60000}
# GLANN's IMLE epochs after its GLO epochs (see budget_arguments).
IMLE_EPOCHS = 10
# Replaces the configs' callbacks and validation: the table measures once, at the end.
QUIET = {
    "trainer": {
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {"save_last": True}}],
    }
}
_print_lock = threading.Lock()


def log(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def budget_arguments(dataset: str, model: str, steps: int) -> list[str]:
    """The trainer budget of one run: ``steps`` generator updates.

    GLANN's generator trains only in its GLO epochs, which take as many whole epochs as fit in
    ``steps`` (at least one); its IMLE stage trains only the mapper, a small MLP whose epochs
    cost a fraction of a GLO epoch, and takes ``IMLE_EPOCHS`` epochs after them, so that the
    mapper converges instead of getting what GLO left of the steps.
    """
    if model != "glann":
        return [f"--generator_steps={steps}", "--trainer.max_epochs=-1"]
    data = yaml.safe_load((REPO / "configs" / dataset / "glann.yaml").read_text())["data"]["init_args"]
    batches = int(TRAIN_IMAGES[dataset] * (1 - data.get("val_fraction", 0.0))) // data["batch_size"]
    glo_epochs = max(1, steps // batches)
    return [f"--model.init_args.glo_epochs={glo_epochs}", f"--trainer.max_epochs={glo_epochs + IMLE_EPOCHS}"]


def train(dataset: str, model: str, steps: int, args: argparse.Namespace, quiet: Path) -> Path:
    """Runs ``genlit fit`` for one config and returns its last checkpoint."""
    config = REPO / "configs" / dataset / f"{model}.yaml"
    version = f"steps{steps}_seed{args.seed}"
    command = [
        sys.executable, "-m", "genlit", "fit",
        "--config", str(config),
        "--config", str(quiet),
        *budget_arguments(dataset, model, steps),
        f"--seed_everything={args.seed}",
        f"--trainer.logger.init_args.save_dir={args.out}",
        f"--trainer.logger.init_args.version={version}",
    ]  # fmt: skip
    if args.device != "cpu":
        command.append(f"--trainer.accelerator={args.device}")
    if dataset != "digits":
        command.append(f"--data.init_args.root={args.data_root}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{dataset}/{model} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return checkpoint(dataset, model, steps, args)


def checkpoint(dataset: str, model: str, steps: int, args: argparse.Namespace) -> Path:
    config = yaml.safe_load((REPO / "configs" / dataset / f"{model}.yaml").read_text())
    name = config["trainer"]["logger"]["init_args"]["name"]
    return Path(args.out) / name / f"steps{steps}_seed{args.seed}" / "checkpoints" / "last.ckpt"


def measure(dataset: str, model: str, ckpt: Path, args: argparse.Namespace):
    from genlit.checkpoints import load_model
    from genlit.evaluate import build_datamodule, evaluate

    config = yaml.safe_load((REPO / "configs" / dataset / f"{model}.yaml").read_text())
    overrides = [] if dataset == "digits" else [f"--data.init_args.root={args.data_root}"]
    features, split = FEATURES[dataset]
    return evaluate(
        build_datamodule(config["data"], overrides),
        model=load_model(ckpt),
        features=features,
        num_samples=args.num_samples,
        split=split,
        device=args.device,
        seed=args.seed,
        cache_dir=args.cache_dir,
        copying=True,
    )


def run_one(dataset: str, model: str, steps: int, args: argparse.Namespace, quiet: Path) -> str:
    start = time.perf_counter()
    ckpt = checkpoint(dataset, model, steps, args)
    if args.skip_training or (args.reuse and ckpt.exists()):
        train_minutes = float("nan")
    else:
        ckpt = train(dataset, model, steps, args, quiet)
        train_minutes = (time.perf_counter() - start) / 60
    result = measure(dataset, model, ckpt, args)
    minutes = (time.perf_counter() - start) / 60
    kid = f"{result.kid_mean:.3g} ± {result.kid_std:.2g}" if result.kid_mean is not None else "-"
    copied = result.copying
    log(f"{dataset} {model}: FID {result.fid:.2f}, C_T {copied['c_t']:.2f} (train {train_minutes:.1f} min)")
    return (
        f"| {dataset} | {NAMES[model]} | {steps} | {result.fid:.2f} | {kid} | {copied['c_t']:.2f} | "
        f"{copied['nn_ratio']:.3f} | {train_minutes:.1f} | {minutes:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["mnist", "fashion_mnist"], choices=sorted(FEATURES)
    )
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument(
        "--generator_steps", type=int, default=1000, help="generator updates at --budget 1"
    )
    parser.add_argument(
        "--budget", type=float, default=1.0, help="multiplies --generator_steps (e.g. 10 on a GPU)"
    )
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-root", default="data", help="folder holding MNIST/ and FashionMNIST/"
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "fid_table"), help="where the runs go")
    parser.add_argument(
        "--cache_dir", default=None, help="reference statistics (default ~/.cache/genlit/fid)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--skip-training", action="store_true", help="measure existing runs only")
    parser.add_argument(
        "--reuse", action="store_true", help="measure runs already trained, train the others"
    )
    args = parser.parse_args()
    steps = max(1, round(args.generator_steps * args.budget))

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        quiet = Path(tmp) / "quiet.yaml"
        quiet.write_text(yaml.safe_dump(QUIET))
        jobs = [(d, m) for d in args.datasets for m in args.models]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(lambda job: run_one(*job, steps, args, quiet), jobs))
    total = (time.perf_counter() - start) / 60

    features = ", ".join(
        f"{d}: {FEATURES[d][0]} features vs {FEATURES[d][1]} split" for d in args.datasets
    )
    print(
        f"\nFID and KID of {args.num_samples} samples (capped at the real images), seed "
        f"{args.seed}; {features}. {args.jobs} run(s) at a time, {args.threads} thread(s) each, "
        f"on {args.device}; whole table {total:.1f} min."
    )
    print("Genlit feature networks: compare rows of this table only, never with Inception FIDs.\n")
    print("| dataset | model | generator steps | FID | KID | C_T | NN ratio | train min | total min |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
