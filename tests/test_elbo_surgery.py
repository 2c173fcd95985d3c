"""ELBO surgery: average KL = mutual information + marginal KL, against quadrature and a tiny VAE."""

import math

import lightning as L
import pytest
import torch
from torch.testing import assert_close

from datamodules.images import Digits
from genlit.losses import gaussian_kl
from genlit.metrics import elbo_surgery, log_aggregate_posterior
from genlit.models import VAE
from genlit.networks.autoencoders import MLPDecoder, MLPEncoder


def _normal_logpdf(z: torch.Tensor, mean: float, log_var: float) -> torch.Tensor:
    return -0.5 * ((z - mean) ** 2 / math.exp(log_var) + log_var + math.log(2 * math.pi))


def test_log_aggregate_posterior_is_the_mixture_density():
    mean = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 3.0]])
    log_var = torch.tensor([[0.0, -1.0], [-4.0, 0.5], [1.0, -9.0]])  # a tiny variance too
    z = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.5, 3.0001], [-3.0, 4.0]])
    components = torch.distributions.Independent(
        torch.distributions.Normal(mean.double(), (0.5 * log_var.double()).exp()), 1
    )
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(3, dtype=torch.float64)), components
    )
    assert_close(
        log_aggregate_posterior(z, mean, log_var, chunk_size=3), mixture.log_prob(z.double())
    )


def test_decomposition_matches_quadrature_in_one_dimension():
    means, log_vars = [-1.5, 0.2, 1.0], [-1.0, 0.0, -2.0]
    grid = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    dz = grid[1] - grid[0]
    log_qn = torch.stack([_normal_logpdf(grid, m, v) for m, v in zip(means, log_vars, strict=True)])
    log_q = torch.logsumexp(log_qn, 0) - math.log(3)
    log_p = _normal_logpdf(grid, 0.0, 0.0)
    marginal_kl = (log_q.exp() * (log_q - log_p)).sum() * dz
    mutual_info = (log_qn.exp() * (log_qn - log_q)).sum(1).mean() * dz
    mean, log_var = torch.tensor(means).unsqueeze(1), torch.tensor(log_vars).unsqueeze(1)
    avg_kl = gaussian_kl(mean, log_var).mean().double()
    # The identity itself, by quadrature.
    assert_close(mutual_info + marginal_kl, avg_kl, rtol=0, atol=1e-6)

    parts = elbo_surgery(
        mean, log_var, num_samples=100_000, generator=torch.Generator().manual_seed(0)
    )
    assert parts.marginal_kl_se < 0.01
    assert abs(parts.marginal_kl - marginal_kl.item()) < 4 * parts.marginal_kl_se
    assert abs(parts.mutual_info - mutual_info.item()) < 4 * parts.marginal_kl_se
    assert parts.avg_kl == pytest.approx(avg_kl.item(), abs=1e-6)


def test_mutual_information_bounds():
    gen = torch.Generator().manual_seed(0)
    # Far-apart components with tiny variances: every code identifies its image, I = log N.
    mean = torch.linspace(-5, 5, 50).unsqueeze(1)  # 0.2 apart, 80 standard deviations
    parts = elbo_surgery(mean, torch.full_like(mean, -12.0), num_samples=20, generator=gen)
    assert parts.mutual_info == pytest.approx(math.log(50), abs=4 * parts.marginal_kl_se)
    assert parts.mutual_info_bound == pytest.approx(math.log(50))
    # One shared posterior: the code says nothing about the image, I = 0, all KL is marginal.
    mean, log_var = torch.full((50, 3), 0.7), torch.full((50, 3), -0.5)
    parts = elbo_surgery(mean, log_var, num_samples=200, generator=gen)
    assert abs(parts.mutual_info) < 4 * parts.marginal_kl_se
    assert parts.marginal_kl == pytest.approx(parts.avg_kl, abs=4 * parts.marginal_kl_se)


def test_tiny_vae_average_kl_is_mutual_information_plus_marginal_kl(tmp_path):
    torch.manual_seed(0)
    model = VAE(
        MLPEncoder(1, 8, latent_dim=3, hidden_dim=32, gaussian=True),
        MLPDecoder(3, 1, 8, hidden_dim=32),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        likelihood="gaussian",  # a sharp decoder makes the code carry information quickly
        decoder_std=0.2,
        surgery_samples=20,
    )
    data = Digits(image_size=8, batch_size=64, val_fraction=0.2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # The model's own numbers: its mutual information is defined as the difference.
    assert metrics["val/kl"] == pytest.approx(
        metrics["val/mutual_info"] + metrics["val/marginal_kl"], abs=1e-3
    )
    assert metrics["val/mutual_info"] > 1.0  # the trained encoder uses its code
    assert metrics["val/marginal_kl"] > 1.0

    # An independent estimate: I(x; z) = E[log q(z|x) - log q(z)] with fresh draws.
    images = torch.cat([data.gather(idx.indices, "train")[0] for idx in data.val_dataloader()])
    model.eval()
    with torch.no_grad():
        mean, log_var = model.encoder(images)
    assert_close(gaussian_kl(mean, log_var).mean().item(), metrics["val/kl"], rtol=1e-4, atol=1e-4)
    gen = torch.Generator().manual_seed(1)
    mean, log_var = mean.double(), log_var.double()
    std = (0.5 * log_var).exp()
    z = (mean + std * torch.randn(20, *mean.shape, generator=gen, dtype=torch.float64)).flatten(
        0, 1
    )
    log_cond = (
        torch.distributions.Normal(mean, std).log_prob(z.view(20, *mean.shape)).sum(-1).flatten()
    )
    gap = log_cond - log_aggregate_posterior(z, mean, log_var)
    mutual_info, mi_se = gap.mean().item(), gap.std().item() / math.sqrt(gap.numel())
    surgery = elbo_surgery(mean, log_var, 20, generator=torch.Generator().manual_seed(2))
    tolerance = 4 * math.hypot(mi_se, surgery.marginal_kl_se)
    assert abs(mutual_info + surgery.marginal_kl - metrics["val/kl"]) < tolerance
    assert abs(mutual_info - metrics["val/mutual_info"]) < tolerance
