"""Does the captured step train as the eager one? Weights after N generator steps, both ways.

Trains the same model from the same seed twice on one device: eagerly with capturable
optimizers (the form ``capture: true`` switches them to), and with ``capture: true``. Equal
mathematics means equal weights; the script prints the largest difference per network and
whether the two runs are bitwise equal, then resumes each run's checkpoint in the other mode
and compares with an uninterrupted run. GAN (with an EMA generator) and WGAN-GP (the gradient
penalty's double backward inside the graph), DCGAN-28 on scikit-learn's digits at 28x28 from
genlit's in-memory datamodule (the data path whose batches the graphs' input buffers take).

    python benchmarks/capture_check.py                  # on CUDA: the point of the script
    python benchmarks/capture_check.py --device cpu     # the plumbing only: capture falls back
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # datamodules/ of a checkout

from datamodules.images import Digits
from genlit._compat import skip_failing_nvml_probe
from genlit.models import GAN, WGANGP
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator


def build(model: str, capture: bool, capturable: bool):
    adam = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999), capturable=capturable)
    generator = DCGANGenerator(100, 1, 28, 64)
    if model == "gan":
        return GAN(generator, DCGANDiscriminator(1, 28, 64), adam, adam, ema_decay=0.99, capture=capture)
    return WGANGP(generator, DCGANDiscriminator(1, 28, 64, batch_norm=False), adam, adam, n_critic=5, capture=capture)


def fit(model: str, capture: bool, capturable: bool, steps: int, device: torch.device, root: Path,
        every: int | None = None, ckpt: str | None = None):
    seed_everything(0)
    module = build(model, capture, capturable)
    per_step = module.optimizer_steps_per_generator_step
    callbacks = [ModelCheckpoint(dirpath=root, every_n_train_steps=every * per_step, save_top_k=-1,
                                 filename="{step}")] if every else []
    trainer = Trainer(
        max_steps=steps * per_step, max_epochs=-1, accelerator="cpu" if device.type == "cpu" else "gpu", devices=1,
        logger=False, enable_checkpointing=bool(every), callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
    )  # fmt: skip
    # genlit's in-memory digits (uint8 on the device, batches by index; resumable mid-epoch).
    trainer.fit(module, datamodule=Digits(image_size=28, batch_size=64), ckpt_path=ckpt)
    return module, per_step


def compare(a, b) -> tuple[bool, dict[str, float]]:
    worst: dict[str, float] = {}
    same = True
    for key, value in a.state_dict().items():
        other = b.state_dict()[key]
        same &= torch.equal(value, other)
        if value.is_floating_point():
            network = key.split(".")[0]
            worst[network] = max(worst.get(network, 0.0), float((value - other).abs().max()))
    return same, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20, help="generator steps (capture begins after 3 of each phase)")
    args = parser.parse_args()
    device = torch.device(args.device)
    capturable = device.type == "cuda"
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    n = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in ("gan", "wgan-gp"):
            eager, per_step = fit(model, False, capturable, n, device, root / model / "eager", every=n // 2)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                captured, _ = fit(model, True, capturable, n, device, root / model / "captured", every=n // 2)
            said = [str(w.message) for w in caught if "captur" in str(w.message)]
            same, worst = compare(eager, captured)
            print(f"{model}: {n} generator steps, eager (capturable optimizers) vs capture: "
                  f"{'bitwise equal' if same else 'differ'}; max |difference| {worst}")
            for line in said:
                print(f"  warning: {line}")
            middle = f"step={n // 2 * per_step}.ckpt"
            for first, then in (("captured", False), ("eager", True)):
                resumed, _ = fit(model, then, capturable, n, device, root / model / f"resumed_{first}",
                                 ckpt=str(root / model / first / middle))
                same, worst = compare(eager, resumed)
                print(f"  {first} checkpoint at {n // 2} resumed {'captured' if then else 'eager'}: "
                      f"{'bitwise equal' if same else 'differ'} to the uninterrupted eager run; {worst}")


if __name__ == "__main__":
    skip_failing_nvml_probe()
    main()
