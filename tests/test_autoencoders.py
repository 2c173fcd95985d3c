"""AE, VAE, WAE-MMD, WAE-GAN: networks, hyperparameter checks, which weights each step moves."""

from __future__ import annotations

import itertools

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from datamodules.images import Digits
from genlit.callbacks import ReconstructionGrid
from genlit.errors import GenlitError
from genlit.losses import gaussian_kl
from genlit.models import AE, GAN, VAE, WAE
from genlit.networks.autoencoders import (
    ConvDecoder,
    ConvEncoder,
    LatentDiscriminator,
    MLPDecoder,
    MLPEncoder,
)
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator

LATENT = 4


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05)


def _pair(gaussian: bool = False, conv: bool = True):
    if conv:
        return ConvEncoder(1, 8, LATENT, width=8, gaussian=gaussian), ConvDecoder(
            LATENT, 1, 8, width=8
        )
    return MLPEncoder(1, 8, LATENT, 32, gaussian=gaussian), MLPDecoder(LATENT, 1, 8, 32)


def _model(kind: str):
    if kind == "ae":
        return AE(*_pair(), optimizer=_sgd)
    if kind == "vae":
        return VAE(*_pair(gaussian=True), optimizer=_sgd)
    if kind == "wae_mmd":
        return WAE(*_pair(), optimizer=_sgd)
    return WAE(
        *_pair(gaussian=True),
        LatentDiscriminator(LATENT, 16, 2),
        _sgd,
        _sgd,
        regularizer="gan",
        reg_weight=1.0,
    )


def _fit(
    model, tmp_path, batches: int = 1, epochs: int = 1, callbacks=(), val: int = 0
) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=val,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(model, Digits(image_size=8, batch_size=32, val_fraction=0.1))
    return trainer


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _same(module, snapshot) -> bool:
    return all(torch.equal(p, s) for p, s in zip(module.parameters(), snapshot, strict=True))


# --- networks ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
def test_conv_encoder_and_decoder_shapes(size):
    x = torch.randn(2, 3, size, size)
    assert ConvEncoder(3, size, 5, width=4)(x).shape == (2, 5)
    mean, log_var = ConvEncoder(3, size, 5, width=4, gaussian=True)(x)
    assert mean.shape == log_var.shape == (2, 5)
    assert ConvDecoder(5, 3, size, width=4)(torch.randn(2, 5)).shape == (2, 3, size, size)


def test_mlp_networks_and_latent_discriminator_shapes():
    x = torch.randn(3, 1, 28, 28)
    assert MLPEncoder(latent_dim=6, hidden_dim=16)(x).shape == (3, 6)
    assert [t.shape for t in MLPEncoder(latent_dim=6, hidden_dim=16, gaussian=True)(x)] == [
        (3, 6)
    ] * 2
    assert MLPDecoder(6, hidden_dim=16)(torch.randn(3, 6)).shape == (3, 1, 28, 28)
    assert LatentDiscriminator(6, 16, 2)(torch.randn(3, 6)).shape == (3,)


def test_networks_refuse_impossible_sizes_and_wrong_inputs():
    with pytest.raises(ValueError, match="latent_dim >= 1"):
        ConvEncoder(latent_dim=0)
    with pytest.raises(ValueError, match="latent_dim >= 1"):
        MLPDecoder(latent_dim=0)
    with pytest.raises(ValueError, match="does not support image_size=20"):
        ConvDecoder(image_size=20)
    with pytest.raises(ValueError, match="built for 1x28x28 images"):
        ConvEncoder()(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expects z of shape \(B, 8\)"):
        ConvDecoder(latent_dim=8)(torch.randn(2, 5))


# --- hyperparameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: VAE(*_pair(gaussian=True), beta=-1.0), "beta must be >= 0"),
        (lambda: VAE(*_pair(gaussian=False)), "VAE needs a Gaussian encoder"),
        (lambda: VAE(*_pair(gaussian=True), likelihood="poisson"), "unknown likelihood 'poisson'"),
        (lambda: AE(*_pair(gaussian=True)), "AE needs a deterministic encoder"),
        (lambda: AE(*_pair(), reconstruction="l1"), "unknown reconstruction 'l1'"),
        (lambda: WAE(*_pair(), reg_weight=-0.1), r"reg_weight \(lambda\) must be >= 0"),
        (lambda: WAE(*_pair(), kernel="laplace"), "unknown kernel 'laplace'"),
        (lambda: WAE(*_pair(), regularizer="kl"), "unknown regularizer 'kl'"),
        (lambda: WAE(*_pair(), regularizer="gan"), "latent discriminator is needed"),
        (lambda: WAE(*_pair(), LatentDiscriminator(LATENT)), "latent discriminator is needed"),
        (
            lambda: WAE(*_pair(), LatentDiscriminator(7), regularizer="gan"),
            "discriminator latent_dim=7",
        ),
        (
            lambda: AE(ConvEncoder(1, 8, 3, 8), ConvDecoder(4, 1, 8, 8)),
            "encoder latent_dim=3 differs",
        ),
    ],
)
def test_impossible_hyperparameters_fail_with_one_line(build, message):
    with pytest.raises(ValueError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_network_built_for_other_images_fails_before_training(tmp_path):
    model = VAE(ConvEncoder(1, 16, LATENT, 8, gaussian=True), ConvDecoder(LATENT, 1, 16, 8))
    with pytest.raises(GenlitError, match="Digits gives image_size=8 but the encoder"):
        _fit(model, tmp_path)


# --- steps -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ae", "vae", "wae_mmd", "wae_gan"])
def test_one_step_changes_every_network(kind, tmp_path):
    torch.manual_seed(0)
    model = _model(kind)
    nets = [model.encoder, model.decoder] + ([model.discriminator] if kind == "wae_gan" else [])
    before = [_snapshot(net) for net in nets]
    trainer = _fit(model, tmp_path)
    assert not any(_same(net, snap) for net, snap in zip(nets, before, strict=True))
    assert trainer.global_step == (2 if kind == "wae_gan" else 1)


def test_wae_gan_each_update_moves_only_its_own_networks(tmp_path):
    torch.manual_seed(0)
    model = _model("wae_gan")
    enc, dec, disc = model.encoder, model.decoder, model.discriminator
    snaps = [{"enc": _snapshot(enc), "dec": _snapshot(dec), "disc": _snapshot(disc)}]

    def spy(optimizer, loss, network, measure=False, keep_gradients=False):
        norm = WAE.step_optimizer(model, optimizer, loss, network, measure, keep_gradients)
        snaps.append({"enc": _snapshot(enc), "dec": _snapshot(dec), "disc": _snapshot(disc)})
        return norm

    model.step_optimizer = spy
    _fit(model, tmp_path)
    start, after_d, after_ae = snaps
    # The discriminator's update: encoder and decoder untouched.
    assert all(torch.equal(a, b) for a, b in zip(after_d["enc"], start["enc"], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(after_d["dec"], start["dec"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(after_d["disc"], start["disc"], strict=True))
    # The autoencoder's update: the discriminator as the discriminator's update left it.
    assert all(torch.equal(a, b) for a, b in zip(after_ae["disc"], after_d["disc"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(after_ae["enc"], after_d["enc"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(after_ae["dec"], after_d["dec"], strict=True))


def test_vae_loss_weighs_the_kl_by_beta():
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    losses = {}
    for beta in (0.0, 1.0, 3.0):
        torch.manual_seed(0)
        model = VAE(*_pair(gaussian=True, conv=False), beta=beta)
        torch.manual_seed(1)  # the same reparameterisation noise for every beta
        losses[beta] = model.training_step((x, None), 0)
    mean, log_var = model.encoder(x)
    kl = gaussian_kl(mean, log_var).mean()
    assert_close(losses[1.0] - losses[0.0], kl)
    assert_close(losses[3.0] - losses[0.0], 3 * kl)


def test_vae_validation_logs_the_elbo_and_its_surgery(tmp_path):
    torch.manual_seed(0)
    trainer = _fit(VAE(*_pair(gaussian=True), optimizer=_sgd), tmp_path, batches=2, val=2)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {
        "val/recon",
        "val/kl",
        "val/elbo",
        "val/mutual_info",
        "val/marginal_kl",
        "val/mmd",
    } <= m.keys()
    assert m["val/elbo"] == pytest.approx(-(m["val/recon"] + m["val/kl"]), abs=1e-3)
    assert m["val/kl"] == pytest.approx(m["val/mutual_info"] + m["val/marginal_kl"], abs=1e-3)


# --- the ex-post Gaussian of the plain autoencoder ---------------------------------------


def test_ae_fits_the_gaussian_of_its_training_codes(tmp_path):
    torch.manual_seed(0)
    model = AE(*_pair(conv=False), optimizer=_sgd, refit_on_train_end=False)
    _fit(model, tmp_path, batches=3)
    # Without the refit, the Gaussian holds the codes collected during the (last) epoch.
    assert model.latent_count.item() == 3 * 32
    data = Digits(image_size=8, batch_size=32, val_fraction=0.1)
    data.setup("fit")
    model.fit_latent_gaussian(data.train_dataloader())
    images = torch.cat([data.gather(b.indices)[0] for b in data.train_dataloader()])
    with torch.no_grad():
        codes = model.encoder(images).double()
    assert model.latent_count.item() == len(codes)
    assert_close(model.latent_mean, codes.mean(0).float())
    assert_close(model.latent_cov, torch.cov(codes.T).float(), rtol=1e-4, atol=1e-6)


def test_ae_samples_from_the_fitted_gaussian_and_checkpoints_it():
    model = AE(*_pair(conv=False))
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0])
    cov = torch.tensor([[2.0, 0.8, 0, 0], [0.8, 1.0, 0, 0], [0, 0, 0.1, 0], [0, 0, 0, 0.5]])
    model.latent_mean.copy_(mean)
    model.latent_cov.copy_(cov)
    torch.manual_seed(0)
    codes = model.prior_codes(50_000).double()
    assert_close(codes.mean(0).float(), mean, atol=0.03, rtol=0)
    assert_close(torch.cov(codes.T).float(), cov, atol=0.05, rtol=0)
    assert model.sample(6).shape == (6, 1, 8, 8)

    clone = AE(*_pair(conv=False))
    clone.load_state_dict(model.state_dict())
    assert_close(clone.latent_cov, cov)
    # ex_post=False decodes prior draws, which a plain autoencoder was never trained to read.
    prior = AE(*_pair(conv=False), ex_post=False).prior_codes(50_000)
    assert_close(prior.mean(0), torch.zeros(LATENT), atol=0.03, rtol=0)


# --- reconstructions ---------------------------------------------------------------------


def test_reconstruction_grid_puts_inputs_above_their_reconstructions(tmp_path):
    torch.manual_seed(0)
    model = AE(*_pair(), optimizer=_sgd)
    grid = ReconstructionGrid(num_images=6, nrow=3)
    _fit(model, tmp_path, callbacks=[grid])
    pixels = np.asarray(Image.open(grid.last_path).convert("L"), dtype=np.float32)  # (H, W)
    assert pixels.shape == (4 * (8 + 2) + 2, 3 * (8 + 2) + 2)  # rows: inputs, recon, inputs, recon
    inputs = grid._inputs
    recon = model.reconstruct(inputs)
    for row, images in ((0, inputs[:3]), (1, recon[:3]), (2, inputs[3:]), (3, recon[3:])):
        for col, image in enumerate(images):
            cell = pixels[2 + row * 10 : 10 + row * 10, 2 + col * 10 : 10 + col * 10]
            expected = ((image[0].clamp(-1, 1) + 1) / 2 * 255).numpy()
            assert np.abs(cell - expected).max() <= 1.0


def test_reconstruction_grid_skips_models_without_reconstruct(tmp_path):
    model = GAN(DCGANGenerator(8, 1, 8, 8), DCGANDiscriminator(1, 8, 8))
    grid = ReconstructionGrid()
    with pytest.warns(UserWarning, match="has no reconstruct"):
        _fit(model, tmp_path, callbacks=[grid])
    assert grid.last_path is None


def test_ae_refit_uses_the_final_weights_over_the_limited_training_batches(tmp_path):
    torch.manual_seed(0)
    model = AE(*_pair(), optimizer=_sgd)  # conv, with batch norm: eval mode matters
    seen = []
    original = model.fit_latent_gaussian

    def spy(batches, max_batches=None):
        seen.append(max_batches)
        batches = list(itertools.islice(batches, max_batches))
        seen.append(batches)
        original(batches)

    model.fit_latent_gaussian = spy
    trainer = _fit(model, tmp_path, batches=2)
    max_batches, batches = seen
    assert max_batches == 2  # limit_train_batches=2 holds for the refit too
    images = torch.cat([trainer.datamodule.gather(b.indices)[0] for b in batches])
    model.eval()
    with torch.no_grad():
        codes = model.encoder(images).double()
    assert model.latent_count.item() == len(codes) == 2 * 32
    assert_close(model.latent_mean, codes.mean(0).float())
    assert_close(model.latent_cov, torch.cov(codes.T).float(), rtol=1e-4, atol=1e-6)


def test_vae_binarize_draws_binary_images_with_the_grey_level_as_probability():
    model = VAE(*_pair(gaussian=True, conv=False), binarize=True)
    x = torch.full((200, 1, 8, 8), 0.5)  # P(1) = 0.75
    binary = model.binarized(x, torch.Generator().manual_seed(0))
    assert set(binary.unique().tolist()) == {-1.0, 1.0}
    assert ((binary + 1) / 2).mean().item() == pytest.approx(0.75, abs=0.01)
    assert torch.equal(VAE(*_pair(gaussian=True, conv=False)).binarized(x), x)
    with pytest.raises(ValueError, match="binarize needs likelihood 'bernoulli'"):
        VAE(*_pair(gaussian=True), likelihood="gaussian", binarize=True)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("latent", [2, 10, 20])
def test_table_configs_train_two_steps(latent, tmp_path):
    # tests/test_configs.py writes 130 fake MNIST images: with 1/6 held out, batch 128 leaves no
    # full training batch, so these configs are also run here with smaller batches.
    from pathlib import Path

    from fakedata import make_mnist

    from genlit.cli import GenlitCLI

    make_mnist(tmp_path / "data", "MNIST", n_train=130, n_test=20)
    config = Path(__file__).resolve().parents[1] / "configs" / "mnist" / f"vae_latent{latent}.yaml"
    cli = GenlitCLI(
        args=[
            "fit",
            "--config",
            str(config),
            f"--data.init_args.root={tmp_path / 'data'}",
            "--data.init_args.download=false",
            "--data.init_args.batch_size=32",
            "--trainer.max_steps=2",
            "--trainer.limit_train_batches=2",
            "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 2
    assert cli.model.latent_dim == latent
    assert {"val/elbo", "val/mutual_info", "val/marginal_kl"} <= cli.trainer.callback_metrics.keys()
