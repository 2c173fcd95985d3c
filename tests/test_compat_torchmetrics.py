"""genlit's reaches into torchmetrics (``genlit._compat``), checked against the installed version.

An upgrade that renames FID's real-side states or KID's generated features fails here, by
name; and the FID/KID states never travel into a model's checkpoint.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from datamodules.images import Digits
from genlit._compat import FID_REAL_STATES, kid_fake_features, set_fid_real_statistics
from genlit.metrics.features import FeatureExtractor
from genlit.metrics.fid import FeatureDistances, ReferenceStats, _ReferenceKID


class Given(nn.Module):
    """The metrics' "feature network" for features given directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double() + shift


def fresh_kid(**kwargs) -> KernelInceptionDistance:
    with warnings.catch_warnings():  # "KID will save all extracted features in buffer"
        warnings.simplefilter("ignore")
        return KernelInceptionDistance(**kwargs)


# --- FID's real side ---------------------------------------------------------------------------


def test_a_fresh_fid_has_the_real_states_genlit_sets():
    fid = FrechetInceptionDistance(feature=Given(6))
    assert set(FID_REAL_STATES) <= set(fid.metric_state)
    assert fid.real_features_sum.shape == (6,) and fid.real_features_sum.dtype == torch.float64
    assert fid.real_features_cov_sum.shape == (6, 6)
    assert fid.real_features_cov_sum.dtype == torch.float64
    assert fid.real_features_num_samples.shape == () and int(fid.real_features_num_samples) == 0


def test_setting_the_real_sums_is_updating_with_the_real_features():
    real, fake = features(300, 6, 0), features(200, 6, 1, shift=0.5)
    updated = FrechetInceptionDistance(feature=Given(6))
    updated.update(real, real=True)
    updated.update(fake, real=False)
    set_sums = FrechetInceptionDistance(feature=Given(6), reset_real_features=False)
    set_fid_real_statistics(set_sums, real.sum(dim=0), real.T @ real, len(real))
    assert set_sums.real_features_num_samples.dtype == torch.long
    set_sums.update(fake, real=False)
    expected = updated.compute()
    assert float(expected) > 0.1  # two different distributions
    torch.testing.assert_close(set_sums.compute(), expected, rtol=1e-9, atol=1e-12)
    set_sums.reset()  # with reset_real_features=False only the generated side goes
    assert int(set_sums.real_features_num_samples) == 300
    set_sums.update(fake, real=False)
    torch.testing.assert_close(set_sums.compute(), expected, rtol=1e-9, atol=1e-12)


def test_setting_the_real_sums_checks_their_names_and_shapes():
    with pytest.raises(RuntimeError, match="no state real_features_sum .* update genlit._compat"):
        set_fid_real_statistics(fresh_kid(feature=Given(4)), torch.zeros(4), torch.zeros(4, 4), 2)
    with pytest.raises(RuntimeError, match=r"real_features_cov_sum of shape \(3, 3\)"):
        set_fid_real_statistics(
            FrechetInceptionDistance(feature=Given(4)), torch.zeros(4), torch.zeros(3, 3), 2
        )


# --- KID's generated side ----------------------------------------------------------------------


def test_kid_keeps_the_generated_features_genlit_reads():
    kid = fresh_kid(feature=Given(5), subset_size=10)
    assert kid_fake_features(kid).shape == (0, 0)
    a, b = features(7, 5, 2), features(4, 5, 3)
    kid.update(a, real=False)
    kid.update(b, real=False)
    kid.update(features(9, 5, 4), real=True)  # the real side is kept apart
    torch.testing.assert_close(kid_fake_features(kid), torch.cat([a, b]), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="no list state fake_features"):
        kid_fake_features(FrechetInceptionDistance(feature=Given(5)))


def test_genlit_kid_with_fixed_real_features_is_torchmetrics_kid():
    """Whole sets as the only subset: torchmetrics' value, with its kernel parameters read."""
    real, fake = features(40, 5, 5), features(30, 5, 6, shift=0.3)
    kernel = dict(degree=2, gamma=0.5, coef=2.0)
    theirs = fresh_kid(feature=Given(5), subsets=3, subset_size=30, **kernel)
    theirs.update(real[:30], real=True)
    theirs.update(fake, real=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _ReferenceKID(real[:30], feature=Given(5), subsets=3, subset_size=30, **kernel)
    ours.update(fake, real=False)
    their_mean, their_std = theirs.compute()
    our_mean, our_std = ours.compute()
    assert float(their_mean) > 1e-3
    torch.testing.assert_close(our_mean.double(), their_mean.double(), rtol=1e-9, atol=0)
    torch.testing.assert_close(float(our_std), 0.0, rtol=0, atol=1e-12)


# --- checkpoints -------------------------------------------------------------------------------


class Linear(FeatureExtractor):
    """A feature network with weights: they, and only they, are FeatureDistances' state dict."""

    name = "linear"
    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 3)

    def forward(self, images):
        return self.proj(images.flatten(1).float())


def test_the_metric_states_are_never_in_a_state_dict():
    distances = FeatureDistances(Linear(), (1, 4, 4), kid=True, kid_subset_size=5)
    real = torch.randn(20, 3, generator=torch.Generator().manual_seed(7))
    distances.set_reference(ReferenceStats.from_features(real, {"test": True}, (1, 4, 4)))
    distances.update(torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8))
    assert int(distances.fid.real_features_num_samples) == 20
    assert set(distances.state_dict()) == {"network.proj.weight", "network.proj.bias"}
    assert distances.fid.state_dict() == {} and distances.kid.state_dict() == {}


def test_a_run_with_the_fid_callback_checkpoints_no_metric_state(tmp_path):
    from genlit.callbacks import FID
    from genlit.models import GAN
    from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator

    torch.manual_seed(0)
    model = GAN(
        DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=8),
        DCGANDiscriminator(channels=1, image_size=16, width=8),
    )
    keys = set(model.state_dict())
    callback = FID(features="digits", split="val", num_samples=50, kid_subsets=2)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=Digits(image_size=16, batch_size=32, val_fraction=0.1))
    assert "val/fid" in trainer.callback_metrics  # the metric ran
    assert callback.distances is not None
    assert int(callback.distances.fid.real_features_num_samples) == 180
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    saved = torch.load(tmp_path / "run.ckpt", map_location="cpu", weights_only=False)
    assert set(model.state_dict()) == keys == set(saved["state_dict"])

    def tensors(value):
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(tensors(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensors(v) for v in value)
        return 0

    fid_entries = [v for k, v in saved.get("callbacks", {}).items() if "FID" in str(k)]
    assert tensors(fid_entries) == 0  # no feature sums, no kept features
