"""AE-OT: the OT map fitted after training, sampled, saved and loaded; its mistakes in one line."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.images import Digits
from datamodules.toy import GaussianGrid
from genlit.errors import GenlitError
from genlit.models import AE, AEOT
from genlit.networks.autoencoders import ConvDecoder, ConvEncoder, IdentityEmbedding

LATENT = 4
QUICK_OT = {"ot_codes": 96, "ot_tolerance": 0.05, "ot_max_seconds": 60.0}


def _pair(latent: int = LATENT):
    return ConvEncoder(1, 8, latent, width=8, gaussian=False), ConvDecoder(latent, 1, 8, width=8)


def _trainer(tmp_path, batches: int = 2, **kwargs) -> L.Trainer:
    settings = {
        "accelerator": "cpu", "max_epochs": 1, "limit_train_batches": batches, "limit_val_batches": 0,
        "num_sanity_val_steps": 0, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**settings, **kwargs})


def _digits() -> Digits:
    return Digits(image_size=8, batch_size=32, val_fraction=0.1)


def test_the_map_is_fitted_when_training_completes_and_sample_decodes_its_codes(tmp_path):
    torch.manual_seed(0)
    model = AEOT(*_pair(), **QUICK_OT)
    assert model.ot is None
    _trainer(tmp_path, batches=4).fit(model, _digits())
    assert model.ot is not None and model.ot.num_points == 96
    assert model.ot_report is not None and model.ot_report.iterations >= 1
    codes = model.prior_codes(500)
    assert codes.shape == (500, LATENT)
    # Every new code lies on the segment between a training code and one of its neighbours.
    points = model.ot.points / model.ot.scale + model.ot.shift
    assert float(torch.cdist(codes, points).min(1).values.max()) <= float(torch.cdist(points, points).max())
    images = model.sample(6)
    assert images.shape == (6, 1, 8, 8) and images.abs().max() <= 1


def test_the_samplers_of_one_autoencoder_differ(tmp_path):
    torch.manual_seed(0)
    model = AEOT(*_pair(), **QUICK_OT)
    _trainer(tmp_path).fit(model, _digits())
    torch.manual_seed(1)
    ot_codes = model.prior_codes(200)
    model.sampler = "gaussian"
    torch.manual_seed(1)
    gaussian_codes = model.prior_codes(200)
    assert not torch.allclose(ot_codes, gaussian_codes)


def test_the_map_travels_in_the_checkpoint_and_draws_the_same_samples(tmp_path):
    torch.manual_seed(0)
    model = AEOT(*_pair(), **QUICK_OT)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _digits())
    path = tmp_path / "aeot.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    loaded = AEOT.load_from_checkpoint(path, encoder=_pair()[0], decoder=_pair()[1])
    assert loaded.ot is not None
    torch.manual_seed(3)
    first = model.sample(8)
    torch.manual_seed(3)
    assert torch.equal(first, loaded.sample(8))
    # The file is data: it loads with weights_only=True (the default of load_from_checkpoint).
    assert "genlit_ot" in torch.load(path, weights_only=True)


def test_identity_embedding_on_toy_data_trains_nothing_and_covers_the_modes(tmp_path):
    torch.manual_seed(0)
    # No threshold set by hand: the calibrated singular-facet test.
    model = AEOT(IdentityEmbedding(2), IdentityEmbedding(2), ot_codes=500, ot_tolerance=0.05)
    data = GaussianGrid(spacing=0.70711, std=0.017678, batch_size=250, samples_per_epoch=500, seed=0)
    _trainer(tmp_path, batches=2).fit(model, data)
    samples = model.sample(2000)
    centers = data.centers
    nearest = torch.cdist(samples, centers).min(1)
    assert len(nearest.indices.unique()) == 25
    # Between-mode samples (further than 3 std from every centre) are rare: the map never
    # interpolates across the gaps between the Gaussians.
    assert float((nearest.values > 3 * 0.017678).float().mean()) < 0.01
    # The share of samples next to a singular facet, logged as ot/rejected_share: the cells
    # along the 40 borders between the 25 modes' regions of the box (about 1.4% here).
    assert 0.0 < model.generation_stats().rejected_share < 0.2


def test_fitting_the_map_to_an_untrained_autoencoder_is_refused(tmp_path):
    model = AEOT(*_pair(), **QUICK_OT)
    data = _digits()
    data.setup("fit")
    with pytest.raises(GenlitError, match="made no training step"):
        model.fit_ot(data.train_dataloader())


class NaNEncoder(ConvEncoder):
    def forward(self, x):
        z = super().forward(x)
        return z * float("nan")


def test_codes_with_nan_are_one_line():
    model = AEOT(NaNEncoder(1, 8, LATENT, width=8, gaussian=False), ConvDecoder(LATENT, 1, 8, width=8), **QUICK_OT,
                 freeze_autoencoder=True)
    model._autoencoder_loaded = True
    with pytest.raises(GenlitError, match="not finite"):
        model.fit_ot([torch.rand(16, 1, 8, 8)])


def test_a_single_code_is_refused():
    with pytest.raises(ValueError, match="ot_codes must be >= 2"):
        AEOT(*_pair(), ot_codes=1)
    model = AEOT(*_pair(), **QUICK_OT, freeze_autoencoder=True)
    model._autoencoder_loaded = True
    with pytest.raises(GenlitError, match="at least 2"):
        model.fit_ot([torch.rand(1, 1, 8, 8)])


def test_an_autoencoder_checkpoint_is_loaded_and_a_latent_mismatch_is_one_line(tmp_path):
    torch.manual_seed(0)
    ae = AE(*_pair())
    trainer = _trainer(tmp_path)
    trainer.fit(ae, _digits())
    path = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(path, weights_only=False)

    model = AEOT(*_pair(), **QUICK_OT, autoencoder_checkpoint=str(path), freeze_autoencoder=True)
    _trainer(tmp_path, batches=2).fit(model, _digits())
    for name, value in ae.encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[name]), name  # loaded, and not trained
    assert model.ot is not None

    wrong = AEOT(*_pair(latent=6), **QUICK_OT, autoencoder_checkpoint=str(path))
    with pytest.raises(GenlitError, match="latent_dim 4, the config says 6: set latent_dim: 4"):
        _trainer(tmp_path).fit(wrong, _digits())


def test_a_map_of_another_dimension_in_a_checkpoint_is_one_line(tmp_path):
    torch.manual_seed(0)
    model = AEOT(*_pair(), **QUICK_OT)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _digits())
    checkpoint = {"genlit_ot": model.ot.state_dict()}
    other = AEOT(*_pair(latent=6))
    with pytest.raises(GenlitError, match="dimension 4, this model's latent_dim is 6"):
        other.on_load_checkpoint(checkpoint)


def test_freezing_an_untrained_autoencoder_is_refused_before_training(tmp_path):
    model = AEOT(*_pair(), **QUICK_OT, freeze_autoencoder=True)
    with pytest.raises(GenlitError, match="autoencoder_checkpoint"):
        _trainer(tmp_path).fit(model, _digits())


# --- AE-OT-GAN ---------------------------------------------------------------------------


def _aeot_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = AEOT(*_pair(), **QUICK_OT)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _digits())
    path = tmp_path / "aeot.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    return model, path


def _gan(path=None, **kwargs):
    from genlit.models import AEOTGAN
    from genlit.networks.dcgan import DCGANDiscriminator

    encoder, decoder = _pair()
    return AEOTGAN(decoder, DCGANDiscriminator(1, 8, width=8), encoder,
                   autoencoder_checkpoint=None if path is None else str(path), **kwargs)


def test_aeot_gan_starts_from_the_aeot_and_trains_only_generator_and_discriminator(tmp_path):
    aeot, path = _aeot_checkpoint(tmp_path)
    gan = _gan(path)
    _trainer(tmp_path, batches=4).fit(gan, _digits())
    assert gan.generator_updates == 4
    for name, value in aeot.encoder.state_dict().items():
        assert torch.equal(value, gan.encoder.state_dict()[name]), name  # the encoder stays fixed
    assert torch.equal(gan.ot.heights, aeot.ot.heights) and torch.equal(gan.ot.points, aeot.ot.points)
    moved = [n for n, v in gan.generator.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, aeot.decoder.state_dict()[n])]
    assert moved  # started from the decoder, then trained
    images = gan.sample(5)
    assert images.shape == (5, 1, 8, 8) and images.abs().max() <= 1
    trainer = _trainer(tmp_path)
    trainer.fit(gan, _digits())
    trainer.save_checkpoint(tmp_path / "gan.ckpt", weights_only=False)
    loaded = type(gan).load_from_checkpoint(tmp_path / "gan.ckpt", generator=_pair()[1], encoder=_pair()[0],
                                            discriminator=_gan().discriminator)
    torch.manual_seed(2)
    first = gan.sample(4)
    torch.manual_seed(2)
    assert torch.equal(first, loaded.sample(4))


def test_aeot_gan_losses_are_the_weighted_terms(tmp_path):
    _, path = _aeot_checkpoint(tmp_path)
    gan = _gan(path, content_weight=0.0, feature_weight=0.0)
    gan.load_autoencoder(str(path))
    gan._real = torch.rand(8, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    out = gan.generator_step(8)
    assert "feature" not in out and torch.allclose(out["loss"], out["adversarial"])
    gan.content_weight, gan.feature_weight = 10.0, 2.0
    torch.manual_seed(0)
    out = gan.generator_step(8)
    assert torch.allclose(out["loss"], out["adversarial"] + 10 * out["content"] + 2 * out["feature"])


def test_aeot_gan_needs_a_fitted_aeot(tmp_path):
    with pytest.raises(GenlitError, match="autoencoder_checkpoint"):
        _trainer(tmp_path).fit(_gan(), _digits())
    ae = AE(*_pair())
    trainer = _trainer(tmp_path)
    trainer.fit(ae, _digits())
    trainer.save_checkpoint(tmp_path / "ae.ckpt", weights_only=False)
    with pytest.raises(GenlitError, match="holds no fitted OT map"):
        _trainer(tmp_path).fit(_gan(tmp_path / "ae.ckpt"), _digits())
    _, path = _aeot_checkpoint(tmp_path)
    with pytest.raises(GenlitError, match="reconstruction mse, the config says bce"):
        _trainer(tmp_path).fit(_gan(path, reconstruction="bce"), _digits())


def test_genlit_checkpoints_imports_first():
    # genlit.checkpoints imports the models, which read checkpoints: no import cycle either way.
    import subprocess
    import sys

    for module in ("genlit.checkpoints", "genlit.models.aeot_gan", "genlit.evaluate"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]


def test_the_map_knows_its_codes_images_and_the_member_test_sees_them(tmp_path):
    from genlit.evaluate import evaluate
    from genlit.metrics.fid import real_positions

    torch.manual_seed(0)
    model = AEOT(*_pair(), **QUICK_OT)
    trainer = _trainer(tmp_path, batches=4)
    data = Digits(image_size=8, batch_size=32, val_fraction=0.1, indices=True)
    trainer.fit(model, data)
    positions = model.copying_members()
    assert positions is not None and len(positions) == 96  # the 96 codes' training images
    assert set(positions.tolist()) <= set(real_positions(data, "train").tolist())
    path = tmp_path / "aeot.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    loaded = AEOT.load_from_checkpoint(path, encoder=_pair()[0], decoder=_pair()[1])
    assert torch.equal(loaded.copying_members(), positions)
    result = evaluate(data, model=loaded, features="digits", num_samples=200, split="train",
                      kid=False, cache_dir=tmp_path / "cache", member_test=True)  # fmt: skip
    assert 0.0 <= result.copying["member_share"] <= 1.0
    # Without positions in the batches the map cannot say, and the member test says so.
    model = AEOT(*_pair(), **QUICK_OT)
    _trainer(tmp_path, batches=4).fit(model, _digits())
    assert model.copying_members() is None
    with pytest.raises(GenlitError, match="recorded no training positions.*indices: true"):
        evaluate(_digits(), model=model, features="digits", num_samples=200, split="train",
                 kid=False, cache_dir=tmp_path / "cache", member_test=True)  # fmt: skip
    with pytest.raises(GenlitError, match="AE holds no state per training image"):
        evaluate(_digits(), model=AE(*_pair()), features="digits", num_samples=200, split="train",
                 kid=False, cache_dir=tmp_path / "cache", member_test=True)  # fmt: skip
