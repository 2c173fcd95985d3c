"""Reconstruction losses, the Gaussian KL, the kernels and the MMD against values computed by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from genlit import losses


def test_gaussian_kl_matches_the_closed_form_by_hand():
    # One dimension each: KL(N(1, 1) || N(0, 1)) = 1/2, KL(N(0, e) || N(0, 1)) = (e - 1 - 1) / 2.
    mean = torch.tensor([[1.0, 0.0]])
    log_var = torch.tensor([[0.0, 1.0]])
    expected = torch.tensor([0.5 + (math.e - 2) / 2])
    assert_close(losses.gaussian_kl(mean, log_var), expected)


def test_gaussian_kl_matches_a_monte_carlo_estimate():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]], dtype=torch.float64)
    log_var = torch.tensor([[0.0, -1.5, 0.7], [-3.0, 0.4, 0.0]], dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    eps = torch.randn(200_000, *mean.shape, generator=gen, dtype=torch.float64)
    z = mean + (0.5 * log_var).exp() * eps  # (S, 2, 3)
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)  # (S, 2)
    estimate, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(log_ratio))
    analytic = losses.gaussian_kl(mean, log_var)
    assert torch.all((estimate - analytic).abs() < 4 * se), (estimate, analytic, se)
    assert torch.all(se < 0.02)


def test_reconstruction_losses_by_hand():
    x = torch.tensor([[[[-1.0, 1.0], [0.0, 0.5]]]])  # (1, 1, 2, 2); targets 0, 1, 0.5, 0.75
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    targets, probs = (
        [0.0, 1.0, 0.5, 0.75],
        [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.e), 1 / (1 + math.exp(-1))],
    )
    bce = -sum(
        t * math.log(p) + (1 - t) * math.log(1 - p) for t, p in zip(targets, probs, strict=True)
    )
    assert_close(losses.bernoulli_reconstruction_loss(logits, x), torch.tensor([bce]))

    x_hat = torch.tensor([[[[-0.5, 1.0], [0.5, 0.0]]]])
    assert_close(
        losses.squared_error_reconstruction_loss(x_hat, x), torch.tensor([0.25 + 0 + 0.25 + 0.25])
    )
    expected = -torch.distributions.Normal(x_hat, 0.3).log_prob(x).sum()
    assert_close(losses.gaussian_reconstruction_loss(x_hat, x, std=0.3), expected.reshape(1))


def test_kernels_match_a_direct_computation():
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    y = torch.tensor([[1.0, 1.0], [-1.0, 3.0]])
    for i in range(3):
        for j in range(2):
            d2 = sum((a - b) ** 2 for a, b in zip(x[i].tolist(), y[j].tolist(), strict=True))
            assert_close(losses.imq_kernel(x, y, 1.5)[i, j], torch.tensor(1.5 / (1.5 + d2)))
            assert_close(losses.rbf_kernel(x, y, 0.7)[i, j], torch.tensor(math.exp(-d2 / 1.4)))


def test_mmd_by_hand_on_two_points_each():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [3.0]])
    c = 2.0 * 1 * 1.0 * 0.5  # imq base 2 d sigma^2, one scale 0.5

    def k(a, b):
        return c / (c + (a - b) ** 2)

    expected = k(0, 1) + k(0, 3) - 2 * (k(0, 0) + k(0, 3) + k(1, 0) + k(1, 3)) / 4
    assert_close(losses.mmd_penalty(x, y, "imq", scales=(0.5,)), torch.tensor(expected))


def test_unbiased_mmd_is_near_zero_for_identical_samples_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=gen)
    # The same sample twice: only the left-out diagonal separates the terms, an O(1/n) gap.
    assert abs(losses.mmd_penalty(x, x).item()) < 2 * 7 / 400
    # Independent samples of one distribution: 0 in expectation.
    same = torch.stack(
        [
            losses.mmd_penalty(
                torch.randn(200, 8, generator=gen), torch.randn(200, 8, generator=gen)
            )
            for _ in range(20)
        ]
    )
    assert abs(same.mean().item()) < 4 * same.std().item() / math.sqrt(20)
    for kernel in ("imq", "rbf"):
        values = [
            losses.mmd_penalty(
                torch.randn(200, 8, generator=gen) + shift,
                torch.randn(200, 8, generator=gen),
                kernel,
            ).item()
            for shift in (0.0, 0.5, 1.0, 2.0)
        ]
        assert values == sorted(values), (kernel, values)
        assert values[1] > 10 * same.std().item(), (kernel, values)


def test_mmd_rejects_unknown_kernels_and_single_samples():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="unknown kernel 'laplace'"):
        losses.mmd_penalty(x, x, kernel="laplace")
    with pytest.raises(ValueError, match="at least 2 samples"):
        losses.mmd_penalty(x[:1], x)
