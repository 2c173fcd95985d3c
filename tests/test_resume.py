"""Exact resume: N steps + resume for N more equals 2N uninterrupted steps, bit for bit."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.images import Digits
from datamodules.toy import GaussianRing
from genlit.models import BEGAN, GAN, GLANN, VAE, WAE, WGANGP
from genlit.networks.autoencoders import LatentDiscriminator, MLPDecoder, MLPEncoder
from genlit.networks.began import BEGANAutoencoder, BEGANDecoder
from genlit.networks.dcgan import DCGANGenerator
from genlit.networks.glann import CodeMapper
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9))


def gan():
    return GAN(MLPGenerator(hidden_dim=32), MLPDiscriminator(hidden_dim=32), adam, adam, ema_decay=0.9)


def wgan_gp():
    return WGANGP(MLPGenerator(hidden_dim=32), MLPDiscriminator(hidden_dim=32), adam, adam, n_critic=5)


def vae():
    encoder = MLPEncoder(image_size=8, latent_dim=4, hidden_dim=32, gaussian=True)
    return VAE(encoder, MLPDecoder(latent_dim=4, image_size=8, hidden_dim=32), adam)


def wae_gan():
    encoder = MLPEncoder(image_size=8, latent_dim=4, hidden_dim=32)
    decoder = MLPDecoder(latent_dim=4, image_size=8, hidden_dim=32)
    return WAE(encoder, decoder, LatentDiscriminator(4, 16, 2), adam, adam, regularizer="gan")


def began():
    # A large gain, so that k_t is well inside (0, 1) at the checkpoint.
    return BEGAN(BEGANDecoder(8, 1, 8, 8), BEGANAutoencoder(1, 8, 8, 8), adam, adam, lambda_k=0.5)


def glann():
    return GLANN(DCGANGenerator(8, 1, 8, 8), CodeMapper(4, 8, 16), adam, adam, glo_epochs=1)


def glann_fresh_optimizers():
    return GLANN(DCGANGenerator(8, 1, 8, 8), CodeMapper(4, 8, 16), adam, adam, glo_epochs=1, lr_halving_epochs=1,
                 fresh_optimizers=True)


def indexed_digits():
    return Digits(image_size=8, batch_size=32, val_fraction=0.1, indices=True)


def toy():
    return GaussianRing(batch_size=32, samples_per_epoch=320, val_samples=64)


def digits():
    return Digits(image_size=8, batch_size=32, val_fraction=0.1)


# (model, datamodule, N): N optimizer steps, the checkpoint every N; the epoch boundary lies
# inside the second half (10 batches per toy epoch, 50 per digits epoch).
CASES = {
    "gan": (gan, toy, 14),  # 7 batches of D + G
    "wgan_gp_mid_cycle": (wgan_gp, toy, 8),  # 7 critic updates: stopped inside the n_critic cycle
    "vae": (vae, digits, 30),
    "wae_gan": (wae_gan, digits, 30),
    "began": (began, digits, 30),  # k_t mid-run in the checkpoint
    "glann_glo": (glann, indexed_digits, 30),  # inside GLO's first epoch, then on into IMLE
    "glann_imle": (glann, indexed_digits, 60),  # inside the first IMLE epoch: its matching kept
    # Resumed inside an epoch whose start cleared Adam's state: the state of the checkpoint holds.
    "glann_fresh_optimizers": (glann_fresh_optimizers, indexed_digits, 60),
}


def fit(model_fn, data_fn, max_steps: int, root: Path, every: int | None = None, ckpt=None):
    seed_everything(0)
    model = model_fn()
    callbacks = []
    if every is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="{step}")
        )
    trainer = Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=every is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=data_fn(), ckpt_path=ckpt)
    return model, trainer


@pytest.mark.parametrize("case", CASES)
def test_resume_is_bitwise_exact(case, tmp_path):
    model_fn, data_fn, n = CASES[case]
    whole, trainer = fit(model_fn, data_fn, 2 * n, tmp_path / "a", every=n)
    middle = tmp_path / "a" / f"step={n}.ckpt"
    assert middle.exists(), sorted(p.name for p in (tmp_path / "a").iterdir())
    resumed, trainer_b = fit(model_fn, data_fn, 2 * n, tmp_path / "b", ckpt=str(middle))
    assert trainer_b.global_step == trainer.global_step == 2 * n
    before = model_fn().state_dict()
    assert resumed.state_dict().keys() == whole.state_dict().keys()
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    changed = [k for k, v in whole.state_dict().items() if v.is_floating_point() and (k not in before or not torch.equal(v, before[k]))]
    assert changed, "training changed no weight: the comparison would be empty"
    if hasattr(whole, "discriminator_updates"):
        assert resumed.discriminator_updates == whole.discriminator_updates
        assert resumed.generator_updates == whole.generator_updates
    if case == "began":
        k = torch.load(middle, weights_only=True)["state_dict"]["k"]
        assert 0 < k < 1 and k != whole.k, (k, whole.k)
    if case == "glann_imle":
        saved = torch.load(middle, weights_only=True)["state_dict"]
        assert saved["imle_epoch"] == 1 and saved["imle_noise"].shape == (1797, 4)
