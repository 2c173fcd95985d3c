"""Mixed precision: the gradient penalty stays in fp32 under bf16 autocast, and every model
trains under --trainer.precision=bf16-mixed with finite losses."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from genlit.losses import gradient_penalty
from genlit.networks.dcgan import DCGANDiscriminator


def test_gradient_penalty_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    critic = DCGANDiscriminator(channels=1, image_size=16, width=8, batch_norm=False)
    real, fake = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    eps = torch.rand(8)
    reference = gradient_penalty(critic, real, fake, eps=eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_penalty(critic, real.bfloat16(), fake.bfloat16(), eps=eps)
    assert mixed.dtype == torch.float32
    # Only the inputs' rounding to bf16 differs (the penalty itself runs in fp32).
    torch.testing.assert_close(mixed, reference, rtol=2e-2, atol=1e-3)
    weights = [p for p in critic.parameters() if p.dim() > 1]
    grads = torch.autograd.grad(reference, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads_mixed = torch.autograd.grad(gradient_penalty(critic, real, fake, eps=eps), weights)
    # Same fp32 inputs: autocast does not reach inside the penalty, so the gradients are equal.
    for a, b in zip(grads, grads_mixed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


MODELS = ["mmgan", "nsgan", "lsgan", "wgan", "wgan_gp", "ae", "vae", "wae_mmd", "wae_gan"]


@pytest.mark.parametrize("name", MODELS)
def test_bf16_mixed_trains_every_model_with_finite_losses(name, tmp_path):
    from genlit.cli import main

    seen = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    import genlit.cli

    original = genlit.cli.GenlitCLI.instantiate_trainer

    def with_record(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.append(Record())
        return trainer

    genlit.cli.GenlitCLI.instantiate_trainer = with_record
    try:
        main(["fit", "--config", f"configs/digits/{name}.yaml", "--generator_steps=4",
              "--trainer.precision=bf16-mixed", "--trainer.log_every_n_steps=1",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--trainer.limit_val_batches=0", "--trainer.callbacks=[]"])
    finally:
        genlit.cli.GenlitCLI.instantiate_trainer = original
    losses = {k: v for k, v in seen.items() if "loss" in k}
    assert losses, seen
    assert all(torch.isfinite(torch.tensor(v)) for v in seen.values()), seen
