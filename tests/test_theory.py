"""The lecture's Theorem 1, checked on a trained discriminator."""

import torch
from torch import nn
from torch.testing import assert_close

from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator


class Shift(nn.Module):
    """A frozen generator: G(z) = z + 1, so p_g = N(1, 1) when z ~ N(0, 1)."""

    latent_dim = 1

    def forward(self, z):
        return z + 1.0


def test_trained_discriminator_approaches_the_optimal_one():
    torch.manual_seed(0)
    model = GAN(Shift(), MLPDiscriminator(data_dim=1, hidden_dim=32, num_layers=2), loss="minimax")
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=3e-3)
    for _ in range(600):
        real = torch.randn(1024, 1)  # p_data = N(0, 1)
        out = model.discriminator_step(real)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    x = torch.linspace(-1.5, 2.5, 41).unsqueeze(1)  # (41, 1), where both densities have mass
    p_data = torch.distributions.Normal(0.0, 1.0).log_prob(x).exp()
    p_g = torch.distributions.Normal(1.0, 1.0).log_prob(x).exp()
    d_star = (p_data / (p_data + p_g)).squeeze(1)
    with torch.no_grad():
        d = torch.sigmoid(model.discriminator(x))
    assert_close(d, d_star, atol=0.04, rtol=0)
