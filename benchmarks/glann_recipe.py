"""GLANN's recipe choices, measured: FID of variants trained alike from one seed.

Each variant trains ``configs/DATASET/glann.yaml``'s networks (the mapper's and the model's
settings overridden as the variant says) for ``--glo_epochs`` GLO epochs, then ``--imle_epochs``
IMLE epochs, in this process, and is measured after the IMLE epochs listed in ``--fid_at``
with genlit's feature network of the dataset (``num_samples`` samples against the training
digits, or against MNIST's test split). Also printed: the FID of ``G(T(e))`` without the
projection onto the sphere (how GLANN sampled before), the FID of the reconstructions ``G(z_i)``
of trained codes (what IMLE could reach at best), and the mean norm of ``T(e)`` (the codes have
norm 1).

    python benchmarks/glann_recipe.py --dataset digits --glo_epochs 20 --imle_epochs 10
    python benchmarks/glann_recipe.py --dataset mnist --data-root DATA --glo_epochs 2 \\
        --imle_epochs 10 --fid_at 1 5 10 --variants official
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
FEATURES = {"digits": ("digits", "train"), "mnist": ("mnist", "test"), "fashion_mnist": ("fashion_mnist", "test")}
# name -> (mapper overrides, model overrides); "official" is yedidh/glann's recipe.
VARIANTS = {
    "plain": ({"batch_norm": False}, {"imle_loss": "sum"}),
    "mapper_bn": ({"batch_norm": True}, {"imle_loss": "sum"}),
    "mean_loss": ({"batch_norm": False}, {"imle_loss": "mean"}),
    "lr_halving": ({"batch_norm": False}, {"imle_loss": "sum", "lr_halving_epochs": 20}),
    "fresh_adam": ({"batch_norm": False}, {"imle_loss": "sum", "fresh_optimizers": True}),
    "official": ({"batch_norm": True}, {"imle_loss": "mean", "lr_halving_epochs": 20, "fresh_optimizers": True}),
    "bn_mean": ({"batch_norm": True}, {"imle_loss": "mean"}),
    "official_codes": ({"batch_norm": False}, {"imle_loss": "sum", "codes_init_std": 0.01, "codes_projection": "epoch"}),
}


def build(config: dict, mapper_overrides: dict, model_overrides: dict, glo_epochs: int):
    import importlib

    from genlit.models import GLANN

    def instantiate(spec: dict, **extra):
        module, name = spec["class_path"].rsplit(".", 1)
        return getattr(importlib.import_module(module), name)(**{**spec.get("init_args", {}), **extra})

    args = dict(config["model"]["init_args"])
    optimizers = {k: _optimizer(args.pop(k)) for k in ("generator_optimizer", "mapper_optimizer")}
    generator, mapper = instantiate(args.pop("generator")), instantiate(args.pop("mapper"), **mapper_overrides)
    return GLANN(generator, mapper, **optimizers, **{**args, "glo_epochs": glo_epochs, **model_overrides})


def _optimizer(spec: dict):
    from functools import partial

    return partial(getattr(torch.optim, spec["class_path"].rsplit(".", 1)[-1]), **spec.get("init_args", {}))


class Unprojected(torch.nn.Module):
    """Samples ``G(T(e))`` with ``T(e)`` as the mapper gives it, not projected onto the sphere."""

    def __init__(self, model) -> None:
        super().__init__()
        self.generator, self.mapper, self.noise_dim = model.generator, model.mapper, model.noise_dim

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.generator(self.mapper(torch.randn(n, self.noise_dim)))


class Reconstructions(torch.nn.Module):
    """Samples ``G(z_i)`` of random trained codes: the GLO stage's reconstructions, the best IMLE
    could reach by hitting the codes exactly."""

    def __init__(self, model, positions: torch.Tensor) -> None:
        super().__init__()
        self.model, self.positions = model, positions

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.model.decode_codes(self.positions[torch.randint(len(self.positions), (n,))])


class Measure(Callback):
    """FID after the listed IMLE epochs, on the global RNG's side (training continues as if
    nothing was measured)."""

    def __init__(self, datamodule, args: argparse.Namespace) -> None:
        self.datamodule, self.args, self.rows = datamodule, args, []
        self.trained: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0:
            self.trained.update(batch[2].tolist())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        imle_epoch = trainer.current_epoch + 1 - pl_module.glo_epochs
        if imle_epoch not in self.args.fid_at:
            return
        from genlit.evaluate import evaluate

        state, modes = torch.get_rng_state(), [m.training for m in pl_module.modules()]
        features, split = FEATURES[self.args.dataset]
        fids = [evaluate(self.datamodule, model=model, features=features, num_samples=self.args.num_samples,
                         split=split, kid=False, seed=self.args.seed).fid
                for model in (pl_module, Unprojected(pl_module),
                              Reconstructions(pl_module, torch.tensor(sorted(self.trained))))]
        for module, mode in zip(pl_module.modules(), modes, strict=True):
            module.train(mode)
        torch.manual_seed(self.args.seed)
        with torch.no_grad():
            was = pl_module.mapper.training
            pl_module.mapper.eval()
            norm = pl_module.mapper(torch.randn(4096, pl_module.noise_dim)).norm(dim=1).mean()
            pl_module.mapper.train(was)
        torch.set_rng_state(state)
        self.rows.append((imle_epoch, *fids, float(norm)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(FEATURES))
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--glo_epochs", type=int, default=20)
    parser.add_argument("--imle_epochs", type=int, default=10)
    parser.add_argument("--fid_at", type=int, nargs="+", default=None, help="IMLE epochs to measure after")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--num_samples", type=int, default=None, help="default: the config FID callback's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.fid_at = args.fid_at or [args.imle_epochs]
    torch.set_num_threads(args.threads)

    from genlit.evaluate import build_datamodule

    config = yaml.safe_load((REPO / "configs" / args.dataset / "glann.yaml").read_text())
    if args.num_samples is None:
        args.num_samples = 10000 if args.dataset != "digits" else None
    overrides = [] if args.dataset == "digits" else [f"--data.init_args.root={args.data_root}"]
    print("| variant | IMLE epochs | FID | FID unprojected | FID of reconstructions | mean norm of T(e) | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.variants:
        start = time.perf_counter()
        seed_everything(args.seed, verbose=False)
        datamodule = build_datamodule(config["data"], overrides)
        model = build(config, *VARIANTS[name], args.glo_epochs)
        measure = Measure(datamodule, args)
        Trainer(max_epochs=args.glo_epochs + args.imle_epochs, limit_val_batches=0, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                accelerator="cpu", callbacks=[measure], default_root_dir="/tmp/glann_recipe").fit(model, datamodule)
        minutes = (time.perf_counter() - start) / 60
        for imle_epoch, fid, raw, rec, norm in measure.rows:
            print(f"| {name} | {imle_epoch} | {fid:.2f} | {raw:.2f} | {rec:.2f} | {norm:.3f} | {minutes:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
