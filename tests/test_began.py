"""BEGAN: each phase moves only its own network, k_t's update and clipping, the networks' range,
and the logged equilibrium measures, through the real training loop."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules.images import Digits
from genlit.errors import GenlitError
from genlit.models import BEGAN
from genlit.networks.began import BEGANAutoencoder, BEGANDecoder, BEGANEncoder

adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))


def _began(**kwargs) -> BEGAN:
    return BEGAN(BEGANDecoder(8, 1, 8, 8), BEGANAutoencoder(1, 8, 8, 8), adam, adam, **kwargs)


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, s) for p, s in zip(module.parameters(), snapshot, strict=True))


def _fit(model: BEGAN, batches: int, tmp_path, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        max_steps=-1, max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", **trainer_kwargs,
    )
    trainer.fit(model, Digits(image_size=8, batch_size=32, val_fraction=0.1))
    return trainer


def test_each_phase_moves_only_its_own_network(tmp_path):
    # The bug of backpropagating d_loss + g_loss together: L_G must never reach D.
    torch.manual_seed(0)
    model = _began()
    g0, d0 = _snapshot(model.generator), _snapshot(model.discriminator)
    seen = {}

    def check_after_d_update():
        seen["g_still"] = _same(model.generator, g0)
        seen["d_moved"] = not _same(model.discriminator, d0)
        seen["d_after_d_step"] = _snapshot(model.discriminator)

    model.after_discriminator_update = check_after_d_update
    _fit(model, 1, tmp_path)
    assert seen["g_still"] and seen["d_moved"]
    assert not _same(model.generator, g0)
    assert _same(model.discriminator, seen["d_after_d_step"])


def _update(model: BEGAN, k: float, real: float, fake: float) -> dict[str, torch.Tensor]:
    model.k.fill_(k)
    model._real_error = torch.tensor(real)
    outputs = {"loss": torch.tensor(fake)}
    model.after_generator_update(outputs)
    return outputs


def test_k_follows_the_balance_and_is_clipped_on_hand_made_values():
    model = _began(gamma=0.5, lambda_k=0.1)
    # gamma L(x) - L(G(z)) = 0.5 * 0.4 - 0.1 = 0.1 > 0: k rises by lambda_k * 0.1.
    out = _update(model, 0.3, real=0.4, fake=0.1)
    assert model.k.item() == pytest.approx(0.31)
    assert out["k"].item() == pytest.approx(0.31)
    assert out["convergence"].item() == pytest.approx(0.4 + 0.1)  # M_global = L(x) + |balance|
    # Balance 0.5 * 0.4 - 0.5 = -0.3 < 0: k falls by 0.03.
    out = _update(model, 0.3, real=0.4, fake=0.5)
    assert model.k.item() == pytest.approx(0.27)
    assert out["convergence"].item() == pytest.approx(0.4 + 0.3)
    # Clipped to [0, 1] at both ends.
    _update(model, 0.0, real=0.1, fake=5.0)
    assert model.k.item() == 0.0
    _update(model, 0.999, real=5.0, fake=0.0)
    assert model.k.item() == 1.0


def test_k_moves_with_the_balance_of_every_training_step_and_stays_in_0_1(tmp_path):
    torch.manual_seed(0)
    model = _began(lambda_k=0.5)
    steps = []
    update = model.after_generator_update

    def record(outputs):
        before = model.k.item()
        balance = model.gamma * model._real_error.item() - outputs["loss"].item()
        update(outputs)
        steps.append((before, balance, model.k.item()))

    model.after_generator_update = record
    _fit(model, 20, tmp_path)
    assert len(steps) == 20
    for before, balance, after in steps:
        assert 0.0 <= after <= 1.0
        assert after == pytest.approx(min(max(before + 0.5 * balance, 0.0), 1.0), abs=1e-6)
    assert any(after > 0 for _, _, after in steps), "k never left 0"


def test_the_discriminator_loss_uses_k_before_its_update(tmp_path):
    torch.manual_seed(0)
    model = _began(k_init=0.25)
    real = torch.rand(4, 1, 8, 8) * 2 - 1
    out = model.discriminator_step(real)
    assert out["loss"].item() == pytest.approx((out["d_real"] - 0.25 * out["d_fake"]).item(), abs=1e-6)


def test_train_k_and_convergence_are_logged(tmp_path):
    torch.manual_seed(0)
    model = _began()
    trainer = _fit(model, 2, tmp_path, log_every_n_steps=1)
    logged = trainer.logged_metrics
    assert {"train/k", "train/convergence", "train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"} <= set(logged)
    assert logged["train/k"].item() == model.k.item()


@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
def test_networks_shapes_and_output_range_match_the_data(size):
    torch.manual_seed(0)
    generator = BEGANDecoder(latent_dim=4, channels=3, image_size=size, width=4)
    discriminator = BEGANAutoencoder(channels=3, image_size=size, width=4, hidden_dim=5)
    images = generator(torch.randn(2, 4))
    assert images.shape == (2, 3, size, size)
    # The generator ends linearly (the paper's); the discriminator's reconstructions lie in
    # [-1, 1], the data's range, even for inputs far outside it.
    assert isinstance(generator.blocks[-1], torch.nn.Conv2d)
    reconstruction = discriminator(torch.randn(2, 3, size, size) * 100)
    assert reconstruction.shape == (2, 3, size, size)
    assert reconstruction.abs().max() <= 1
    assert BEGANEncoder(3, size, 4, 5)(images).shape == (2, 5)


def test_samples_are_clamped_to_the_data_range_and_training_sees_them_unclamped():
    model = _began()
    with torch.no_grad():
        model.generator.blocks[-1].bias.fill_(5.0)  # every pixel far above 1
    assert model.sample(3).max() == 1.0
    assert model.generator(model.noise(3)).min() > 1.0


def test_unsupported_image_size_is_one_clear_error():
    with pytest.raises(ValueError, match="image_size=48.*supported sizes"):
        BEGANDecoder(image_size=48)


class _Identity(torch.nn.Module):
    """A perfect autoencoder with one weight (an optimizer needs parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_reconstruction_error_compares_in_the_data_normalisation():
    model = BEGAN(BEGANDecoder(8, 1, 8, 8), _Identity(), adam, adam)
    v = torch.rand(4, 1, 8, 8) * 2 - 1
    assert model.reconstruction_error(v).item() == 0.0  # the identity reconstructs exactly
    model.discriminator.scale.data.fill_(0.5)
    assert model.reconstruction_error(v).item() == pytest.approx((0.5 * v).abs().mean().item())


def test_a_discriminator_that_is_not_an_autoencoder_is_one_line():
    from genlit.networks.dcgan import DCGANDiscriminator

    model = BEGAN(BEGANDecoder(8, 1, 8, 8), DCGANDiscriminator(1, 8, 8), adam, adam)
    with pytest.raises(GenlitError, match="must be an autoencoder returning reconstructions"):
        model.discriminator_step(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"lambda_k": -1.0}, "lambda_k"),
     ({"k_init": 1.5}, "k_init")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _began(**kwargs)
