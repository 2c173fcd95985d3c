"""Every DDP run of tests/test_ddp.py in one launch of two CPU processes (gloo).

    python tests/ddp_launch.py OUT_DIR

Each family trains in turn through the genlit command with plain ``--trainer.strategy=ddp``,
then the FID callback measures the fixed bank of tests/ddp_fid_script.py. Lightning starts the
second rank once, re-running this script with ``LOCAL_RANK=1``, and every later ``fit`` reuses
the process group: two interpreters for all the runs instead of two per run. Rank 0 prints
``=== NAME`` before each run, so the output splits into one section per run, and after each
fit ``ranks: N (Strategy)``: the number of processes that fit trained on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddp_checks import final_digests  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from genlit.cli import main  # noqa: E402

DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
       "--trainer.enable_progress_bar=false"]

CASES = {
    # Toy epochs of 8 batches: the mode metrics run (each rank its share, gathered) after epoch 1.
    "gan": ("configs/toy/ring_nsgan.yaml", ["--generator_steps=10", "--data.init_args.samples_per_epoch=2048",
                                             "--trainer.check_val_every_n_epoch=1"]),
    "wgan_gp": ("configs/toy/ring_wgan_gp.yaml", ["--generator_steps=3", "--data.init_args.samples_per_epoch=2048",
                                                   "--trainer.check_val_every_n_epoch=1"]),
    "wgan": ("configs/toy/ring_wgan.yaml", ["--generator_steps=3", "--data.init_args.samples_per_epoch=2048"]),
    # Image families: batch-norm networks, whose running statistics each rank updates itself.
    "gan_images": ("configs/digits/nsgan.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
    "ae": ("configs/digits/ae.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
    "vae": ("configs/digits/vae.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
    "wae_gan": ("configs/digits/wae_gan.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
    # BEGAN: k_t from the balance averaged over both ranks, the same on each.
    "began": ("configs/digits/began.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0"]),
    # GLANN: one GLO epoch (per-image codes, dense gradients reduced), then IMLE, whose matching
    # every rank computes alike from its own noise stream.
    "glann": ("configs/digits/glann.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0",
                                            "--model.init_args.glo_epochs=1", "--trainer.max_epochs=2",
                                            "--trainer.limit_train_batches=3"]),
    # AE-OT: the codes of both ranks gathered, one map fitted and shared; AE-OT-GAN from it.
    "aeot": ("configs/digits/aeot.yaml", ["--generator_steps=6", "--trainer.limit_val_batches=0",
                                          "--model.init_args.ot_codes=200", "--model.init_args.ot_tolerance=0.1"]),
    "aeot_gan": ("configs/digits/aeot_gan.yaml", [
        "--generator_steps=6", "--trainer.limit_val_batches=0",
        "--model.init_args.autoencoder_checkpoint={out}/aeot/digits/aeot/version_0/checkpoints/last.ckpt"]),
}
# Every run also checks, at each evaluation point, that the ranks hold the same networks.
CHECKS = ["--trainer.callbacks+=ddp_checks.RanksAgree"]


def announce(name: str) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"=== {name}", flush=True)


def report_ranks(run_subcommand):
    """Wraps LightningCLI._run_subcommand: rank 0 says how many processes each fit trained on,
    and whether the ranks (and the last checkpoint) ended with the same networks."""

    def run(self, subcommand):
        run_subcommand(self, subcommand)
        agreement = final_digests(self.trainer)
        if self.trainer.is_global_zero:
            print(f"ranks: {self.trainer.world_size} ({type(self.trainer.strategy).__name__})", flush=True)
            print(f"agree: {agreement}", flush=True)

    return run


if __name__ == "__main__":
    out = Path(sys.argv[1])
    LightningCLI._run_subcommand = report_ranks(LightningCLI._run_subcommand)
    for case, (config, extra) in CASES.items():
        announce(case)
        extra = [a.format(out=out) for a in extra]
        main(["fit", "--config", config, *DDP, *CHECKS, *extra, f"--trainer.logger.init_args.save_dir={out / case}"])
    announce("fid")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ddp_fid_script import KEYS, measure

    values = measure(2, str(out / "fid_cache"))
    if values is not None:
        others = " ".join(f"{k}={v:.8f}" for k, v in zip(KEYS[2:], values[2:], strict=True))
        print(f"FID={values[0]:.6f} KID={values[1]:.6f} {others}", flush=True)
