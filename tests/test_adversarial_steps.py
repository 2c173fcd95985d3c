"""Which weights each phase moves, the k-cycle and weight clipping, through the real training
loop; the WGAN-GP critic step against the closed form of a linear critic's penalty."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from tiny import mlp_nets

from datamodules.toy import GaussianRing
from genlit.models import GAN, WGAN, WGANGP
from genlit.networks.mlp import MLPGenerator


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
    g, d = mlp_nets()
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
    g, d = mlp_nets()
    model = GAN(g, d, _sgd, _sgd, k=5)
    g0 = _snapshot(g)
    trainer = _fit(model, 4, tmp_path)
    # Four batches are four D updates and no G update yet.
    assert (model.discriminator_updates, model.generator_updates) == (4, 0)
    assert _same(g, g0)
    assert trainer.global_step == 4

    model = GAN(*mlp_nets(), _sgd, _sgd, k=5)
    trainer = _fit(model, 15, tmp_path)
    assert (model.discriminator_updates, model.generator_updates) == (15, 3)
    # Manual optimization: global_step counts every optimizer step, k + 1 per generator step.
    assert trainer.global_step == 18


def test_wgan_critic_weights_stay_in_the_clipping_box(tmp_path):
    torch.manual_seed(0)
    g, d = mlp_nets()
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


class _LinearCritic(torch.nn.Module):
    """f(x) = w.x + b, whose gradient is w at every point: the penalty is lambda (|w| - 1)^2."""

    def __init__(self, w: list[float], b: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(len(w), 1)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([w]))
            self.layer.bias.fill_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).squeeze(-1)  # (B, 2) -> (B,)


@pytest.mark.parametrize(("w", "gp_weight", "gp"), [
    ([3.0, 4.0], 10.0, 10.0 * (5.0 - 1.0) ** 2),  # |w| = 5: steeper than 1
    ([0.6, 0.0], 2.5, 2.5 * (0.6 - 1.0) ** 2),  # |w| = 0.6: flatter than 1, the two-sided case
])
def test_wgan_gp_step_logs_the_penalty_of_a_linear_critic(w, gp_weight, gp):
    torch.manual_seed(0)
    model = WGANGP(MLPGenerator(hidden_dim=16, num_layers=2), _LinearCritic(w, b=0.5), _sgd, _sgd,
                   gp_weight=gp_weight, n_critic=1)
    real = torch.randn(8, 2)
    out = model.discriminator_step(real)
    assert set(out) >= {"loss", "gp", "wasserstein", "d_real", "d_fake"}
    torch.testing.assert_close(out["gp"], torch.tensor(gp))
    torch.testing.assert_close(out["d_real"], (real @ torch.tensor(w)).mean() + 0.5)
    torch.testing.assert_close(out["wasserstein"], out["d_real"] - out["d_fake"])
    # The critic's loss is E f(fake) - E f(real) + penalty.
    torch.testing.assert_close(out["loss"].detach(), out["d_fake"] - out["d_real"] + gp)
