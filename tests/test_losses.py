"""Every loss against values computed by hand on fixed logits."""

import math

import pytest
import torch
from torch.testing import assert_close

from genlit import losses

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def mean(values):
    return torch.tensor(sum(values) / len(values))


def test_minimax_discriminator_is_binary_cross_entropy():
    expected = mean([-math.log(sigmoid(r)) for r in REAL.tolist()]) + mean(
        [-math.log(1 - sigmoid(f)) for f in FAKE.tolist()]
    )
    assert_close(losses.minimax_discriminator_loss(REAL, FAKE), expected)
    assert_close(losses.non_saturating_discriminator_loss(REAL, FAKE), expected)


def test_minimax_generator_is_log_one_minus_d():
    expected = mean([math.log(1 - sigmoid(f)) for f in FAKE.tolist()])
    assert_close(losses.minimax_generator_loss(FAKE), expected)


def test_non_saturating_generator_is_minus_log_d():
    expected = mean([-math.log(sigmoid(f)) for f in FAKE.tolist()])
    assert_close(losses.non_saturating_generator_loss(FAKE), expected)


def test_least_squares():
    # 0.5 * mean((r - 1)^2) + 0.5 * mean(f^2) = 0.5 * (1 + 4) / 2 + 0.5 * (0.25 + 9) / 2
    assert_close(losses.least_squares_discriminator_loss(REAL, FAKE), torch.tensor(1.25 + 2.3125))
    # 0.5 * mean((f - 1)^2) = 0.5 * (0.25 + 16) / 2
    assert_close(losses.least_squares_generator_loss(FAKE), torch.tensor(4.0625))


def test_hinge():
    # mean(relu(1 - r)) = (0 + 2) / 2 = 1; mean(relu(1 + f)) = (1.5 + 0) / 2 = 0.75
    assert_close(losses.hinge_discriminator_loss(REAL, FAKE), torch.tensor(1.75))
    assert_close(losses.hinge_generator_loss(FAKE), torch.tensor(1.25))


def test_wasserstein():
    # mean(f) - mean(r) = -1.25 - 0.5
    assert_close(losses.wasserstein_discriminator_loss(REAL, FAKE), torch.tensor(-1.75))
    assert_close(losses.wasserstein_generator_loss(FAKE), torch.tensor(1.25))


def test_minimax_generator_saturates_where_non_saturating_does_not():
    # The lecture's "slow at the beginning": when D confidently rejects fakes (logit -10),
    # d/dlogit log(1 - D) = -sigmoid(logit) ~ 4.5e-5 while d/dlogit -log D = sigmoid - 1 ~ -1.
    logit = torch.tensor([-10.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(losses.minimax_generator_loss(logit), logit)
    (g_ns,) = torch.autograd.grad(losses.non_saturating_generator_loss(logit), logit)
    assert_close(g_mm, torch.tensor([-sigmoid(-10.0)]))
    assert_close(g_ns, torch.tensor([sigmoid(-10.0) - 1]))


def test_large_logits_stay_finite():
    big = torch.tensor([80.0, -80.0])
    for name in ["minimax", "non_saturating"]:
        assert torch.isfinite(losses.discriminator_loss(name)(big, -big))
        assert torch.isfinite(losses.generator_loss(name)(big))


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="non_saturating"):
        losses.generator_loss("nonsaturating")


class Linear(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("w, expected", [([0.6, 0.8], 0.0), ([0.0, 2.0], 10.0), ([1.2, 1.6], 10.0)])
def test_gradient_penalty_of_a_linear_critic(w, expected):
    # grad_x (w . x) = w everywhere, so the penalty is lambda * (|w| - 1)^2: 0 for |w| = 1, lambda for 2.
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    gp = losses.gradient_penalty(Linear(w), real, fake, weight=10.0)
    assert_close(gp, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_gradient_penalty_is_per_sample():
    # f(x) = |x|^2 / 2 has gradient x: per-sample norms |x_hat_i|. With eps = 1 the interpolate
    # is the real point, so the penalty is lambda * mean_i (|x_i| - 1)^2, not (mean norm - 1)^2.
    real = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    fake = torch.zeros(2, 2)
    gp = losses.gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1), real, fake, weight=1.0,
                                 eps=torch.ones(2))
    assert_close(gp, torch.tensor((4.0 + 0.0) / 2))


def test_gradient_penalty_reaches_the_critic_weights():
    critic = Linear([0.0, 2.0])
    losses.gradient_penalty(critic, torch.randn(8, 2), torch.randn(8, 2)).backward()
    # d/dw 10 * (|w| - 1)^2 = 20 * (|w| - 1) * w / |w| = [0, 20]
    assert_close(critic.w.grad, torch.tensor([0.0, 20.0]))
