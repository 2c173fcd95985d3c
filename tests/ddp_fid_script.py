"""FID callback under DDP on a fixed bank of images, for tests/test_ddp.py.

    python tests/ddp_fid_script.py DEVICES CACHE_DIR

Each rank's model returns its contiguous share of one fixed bank of 300 images (half
real digits, half noise), so one process
and two processes measure exactly the same set. tests/ddp_launch.py calls :func:`measure` with
two processes, tests/test_ddp.py with one; run as a script, rank 0 prints
``FID=<value> KID=<value>`` and the other :data:`KEYS`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.images import Digits  # noqa: E402
from genlit.callbacks import FID, ClassCoverage  # noqa: E402
from genlit.metrics.fid import real_batches, share  # noqa: E402
from genlit.models import GenerativeModel  # noqa: E402

BANK = 300


class Bank(GenerativeModel):
    """Hands out the images of a fixed bank in order, each rank from its own contiguous part."""

    latent_dim = 1

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        noise = torch.rand(BANK // 2, 1, 16, 16, generator=generator) * 2 - 1
        digits = Digits(image_size=16, batch_size=BANK)
        real = next(real_batches(digits, "train"))[: BANK - len(noise)].float() / 127.5 - 1
        bank = torch.cat([real, noise])[torch.randperm(BANK, generator=generator)]  # half digits, half noise
        self.register_buffer("bank", bank)
        self.cursor = 0

    def on_validation_epoch_start(self) -> None:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        self.start = sum(share(BANK, world, r) for r in range(rank))
        self.size = share(BANK, world, rank)
        self.cursor = 0

    def sample(self, n: int) -> torch.Tensor:
        # Every evaluation callback draws this rank's whole share: each one sees the same part.
        positions = self.start + torch.arange(self.cursor, self.cursor + n) % self.size
        self.cursor += n
        return self.bank[positions]


KEYS = ("fid", "kid_mean", "precision", "recall", "density", "coverage", "classes", "kl_classes", "confident",
        "c_t", "nn_ratio", "closer_share", "memorization", "mifid")


def measure(devices: int, cache: str) -> tuple[float, ...] | None:
    """FID, KID, precision/recall/density/coverage, class coverage and the data-copying
    figures (:data:`KEYS`) of the bank
    against the digits' training split; None on ranks other than 0."""
    trainer = Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
        default_root_dir=cache,  # the nearest-neighbour picture goes there, not into the checkout
        callbacks=[FID(features="digits", num_samples=BANK, split="train", batch_size=64,
                       kid_subsets=10, kid_subset_size=100, cache_dir=cache, precision_recall=True),
                   ClassCoverage(classifier="digits", num_samples=BANK, split="train", batch_size=64)],
    )
    trainer.validate(Bank(), datamodule=Digits(image_size=16, batch_size=64, val_fraction=0.1))
    if not trainer.is_global_zero:
        return None
    metrics = trainer.callback_metrics
    return tuple(float(metrics[f"val/{key}"]) for key in KEYS)


if __name__ == "__main__":
    values = measure(int(sys.argv[1]), sys.argv[2])
    if values is not None:
        print(f"FID={values[0]:.6f} KID={values[1]:.6f} " + " ".join(f"{k}={v:.8f}" for k, v in zip(KEYS[2:], values[2:], strict=True)))
