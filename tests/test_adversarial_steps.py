"""Which weights each phase moves, the k-cycle, weight clipping: through the real training loop."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules.toy import GaussianRing
from genlit.models import GAN, WGAN, WGANGP
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator


def _nets():
    return MLPGenerator(hidden_dim=16, num_layers=2), MLPDiscriminator(hidden_dim=16, num_layers=2)


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, s) for p, s in zip(module.parameters(), snapshot, strict=True))


def _fit(model, batches: int, tmp_path) -> Trainer:
    trainer = Trainer(
        max_steps=-1, max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )
    trainer.fit(model, GaussianRing(batch_size=32, samples_per_epoch=32 * 20))
    return trainer


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


@pytest.mark.parametrize("loss", ["minimax", "non_saturating", "least_squares", "hinge"])
def test_each_phase_moves_only_its_own_network(loss, tmp_path):
    torch.manual_seed(0)
    g, d = _nets()
    model = GAN(g, d, _sgd, _sgd, loss=loss, k=1)
    g0, d0 = _snapshot(g), _snapshot(d)
    seen = {}

    def check_after_d_update():
        # Right after the discriminator's update: G untouched, D moved.
        seen["g_still"] = _same(g, g0)
        seen["d_moved"] = not _same(d, d0)
        seen["d_after_d_step"] = _snapshot(d)

    model.after_discriminator_update = check_after_d_update
    _fit(model, 1, tmp_path)
    assert seen == {**seen, "g_still": True, "d_moved": True}
    # The generator's update that followed moved G and left D as the D step left it.
    assert not _same(g, g0)
    assert _same(d, seen["d_after_d_step"])


def test_k_discriminator_updates_per_generator_update(tmp_path):
    torch.manual_seed(0)
    g, d = _nets()
    model = GAN(g, d, _sgd, _sgd, k=5)
    g0 = _snapshot(g)
    trainer = _fit(model, 4, tmp_path)
    # Four batches are four D updates and no G update yet.
    assert (model.discriminator_updates, model.generator_updates) == (4, 0)
    assert _same(g, g0)
    assert trainer.global_step == 4

    model = GAN(*_nets(), _sgd, _sgd, k=5)
    trainer = _fit(model, 15, tmp_path)
    assert (model.discriminator_updates, model.generator_updates) == (15, 3)
    # Manual optimization: global_step counts every optimizer step, k + 1 per generator step.
    assert trainer.global_step == 18


def test_wgan_critic_weights_stay_in_the_clipping_box(tmp_path):
    torch.manual_seed(0)
    g, d = _nets()
    clip = 0.01
    model = WGAN(g, d, _sgd, _sgd, clip=clip, n_critic=5)
    checks = []
    original = model.after_discriminator_update

    def clip_and_check():
        original()
        checks.append(max(p.abs().max().item() for p in d.parameters()))

    model.after_discriminator_update = clip_and_check
    _fit(model, 12, tmp_path)
    assert len(checks) == 12
    assert max(checks) <= clip
    # Clipping is active (SGD at lr 0.1 pushes weights past the box), not vacuous.
    assert max(checks) == pytest.approx(clip)
    assert model.generator_updates == 2


def test_wgan_gp_logs_penalty_and_rejects_batch_norm(tmp_path):
    torch.manual_seed(0)
    model = WGANGP(*_nets(), _sgd, _sgd, n_critic=1)
    out = model.discriminator_step(torch.randn(8, 2))
    assert set(out) >= {"loss", "gp", "wasserstein", "d_real", "d_fake"}
    assert out["gp"] >= 0
    critic = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="batch norm"):
        WGANGP(MLPGenerator(), critic)


@pytest.mark.parametrize("factory", [
    lambda: GAN(*_nets(), k=0),
    lambda: WGAN(*_nets(), n_critic=0),
    lambda: WGAN(*_nets(), clip=0.0),
    lambda: WGANGP(*_nets(), gp_weight=-1.0),
])
def test_impossible_hyperparameters_are_refused(factory):
    with pytest.raises(ValueError, match="must be"):
        factory()


def test_sample_shape_and_mode():
    model = GAN(*_nets())
    model.train()
    x = model.sample(7)
    assert x.shape == (7, 2) and not x.requires_grad
    assert model.generator.training  # sample() restores the mode it found
