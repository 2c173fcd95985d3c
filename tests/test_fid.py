"""FID and KID: analytic values, the reference cache, the callback in a run, ``genlit evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from scipy import linalg
from torch import nn

from datamodules.images import Digits
from genlit.callbacks import FID
from genlit.callbacks._rng import seeded
from genlit.cli import main
from genlit.metrics.features import FeatureExtractor, load_features
from genlit.metrics.fid import (
    FeatureDistances,
    ReferenceStats,
    generate_into,
    real_batches,
    reference_key,
    reference_path,
    reference_statistics,
    share,
    to_uint8,
)
from genlit.models import GAN
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator

REPO = Path(__file__).resolve().parents[1]


class Flatten(FeatureExtractor):
    """Features = the pixels themselves."""

    name = "flatten"

    def forward(self, images):
        return images.reshape(len(images), -1).float()


def distances_of(d: int, **kwargs) -> FeatureDistances:
    """FID/KID of d-dimensional feature vectors given directly (update_features)."""
    return FeatureDistances(Flatten(), (1, 1, d), **kwargs)


def reference_of(real: torch.Tensor) -> ReferenceStats:
    return ReferenceStats.from_features(real, {"test": True}, (1, 1, real.shape[1]))


def fid_of(real: torch.Tensor, fake: torch.Tensor, kid: bool = False, **kwargs) -> dict[str, float]:
    distances = distances_of(real.shape[1], kid=kid, **kwargs)
    distances.set_reference(reference_of(real))
    for chunk in fake.split(100):
        distances.update_features(chunk)
    return distances.compute()


def pytorch_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """The classic formula as pytorch-fid writes it (scipy's sqrtm)."""
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    sigma1, sigma2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def exact_gaussian(n: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    """n points whose sample mean and unbiased sample covariance are exactly mean, diag(std^2)."""
    z = torch.randn(
        n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T  # sample covariance now exactly I
    return mean + z * std


# --- the value ---------------------------------------------------------------------------------


def test_to_uint8_rounds_to_the_nearest_level_and_inverts_the_datamodules():
    levels = torch.arange(256, dtype=torch.float32)
    assert torch.equal(to_uint8(-1 + levels / 127.5), levels.to(torch.uint8))
    # 0.999 is level 254.87: rounding gives 255 where truncation would give 254.
    assert to_uint8(torch.tensor([0.999, -0.999, -1.5, 1.5])).tolist() == [255, 0, 0, 255]


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    torch.testing.assert_close(fid_of(x, x)["fid"], 0.0, atol=1e-5, rtol=0)


def test_fid_does_not_depend_on_the_order_of_the_samples():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(600, 6, generator=gen), torch.rand(400, 6, generator=gen)
    shuffled = fake[torch.randperm(400, generator=gen)]
    torch.testing.assert_close(
        fid_of(real, shuffled)["fid"], fid_of(real, fake)["fid"], rtol=1e-9, atol=0
    )


def test_fid_of_two_gaussians_is_the_closed_form():
    mean1, mean2 = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    std1, std2 = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([2.0, 1.0, 0.5, 3.0])
    real = exact_gaussian(300, mean1.double(), std1.double(), seed=0)
    fake = exact_gaussian(200, mean2.double(), std2.double(), seed=1)
    # d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); diagonal S: sum (std1 - std2)^2.
    expected = float(((mean1 - mean2) ** 2).sum() + ((std1 - std2) ** 2).sum())  # 6.25 + 6.0
    torch.testing.assert_close(fid_of(real, fake)["fid"], expected, rtol=1e-5, atol=0)


def test_fid_equals_the_classic_scipy_formula():
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(800, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    fake = torch.rand(700, 16, generator=gen) * 4 - 1
    expected = pytorch_fid(real.double().numpy(), fake.double().numpy())
    torch.testing.assert_close(fid_of(real, fake)["fid"], expected, rtol=1e-3, atol=0)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    gen = torch.Generator().manual_seed(3)
    real, same, other = (torch.randn(600, 8, generator=gen) for _ in range(3))
    near = fid_of(real, same, kid=True, kid_subset_size=200, kid_subsets=50)
    far = fid_of(real, other + 1.0, kid=True, kid_subset_size=200, kid_subsets=50)
    assert near["kid_std"] > 0 and abs(near["kid_mean"]) < 3 * near["kid_std"]
    assert far["kid_mean"] > 10 * far["kid_std"] > 0
    # The population value, with k(x, y) = (x.y / d + 1)^3 and T = x.y for x ~ N(a, I),
    # y ~ N(b, I): E T = a.b = m, E T^2 = m^2 + |a|^2 + |b|^2 + d,
    # E T^3 = m^3 + 3 m (|a|^2 + |b|^2 + d) + 6 m. In d = 8, N(0, I) against N(1, I):
    # E k(x, x') = 1 + 3/8, E k(y, y') = 1136/512 + 3 * 88/64 + 3 + 1, E k(x, y) = 3 * 16/64 + 1.
    mmd2 = (1 + 3 / 8) + (1136 / 512 + 3 * 88 / 64 + 3 + 1) - 2 * (3 * 16 / 64 + 1)  # 8.21875
    assert abs(far["kid_mean"] - mmd2) < 2 * far["kid_std"], (far, mmd2)


def test_kid_over_whole_sets_is_torchmetrics_polynomial_mmd():
    from torchmetrics.image.kid import poly_mmd

    gen = torch.Generator().manual_seed(6)
    real, fake = torch.randn(300, 8, generator=gen), torch.randn(200, 8, generator=gen) * 1.5
    # Subsets of 200 from 200 fakes are the whole set; the real subsets vary, so compare
    # with real and fake of equal size, where each subset is a permutation of everything.
    values = fid_of(real[:200], fake, kid=True, kid_subset_size=1000, kid_subsets=3)
    expected = float(poly_mmd(real[:200].double(), fake.double()))
    torch.testing.assert_close(values["kid_mean"], expected, rtol=1e-5, atol=0)
    assert values["kid_std"] < 1e-6 * abs(expected)


def test_ranks_summing_their_states_give_the_single_process_value():
    """The DDP contract: rank 0 alone holds the real sums, each rank adds its own samples."""
    gen = torch.Generator().manual_seed(4)
    real, fake = torch.randn(400, 5, generator=gen), torch.randn(300, 5, generator=gen) + 0.3
    ranks = [distances_of(5, kid=False) for _ in range(2)]
    stats = reference_of(real)
    for rank, distances in enumerate(ranks):
        distances.set_reference(stats, hold=rank == 0)
        distances.update_features(fake[share(300, 2, 0) :] if rank else fake[: share(300, 2, 0)])
    assert (
        share(300, 2, 0) + share(300, 2, 1) == 300 and share(7, 3, 0) == 3 and share(7, 3, 2) == 2
    )
    merged = ranks[0]
    for name in (
        "real_features_sum",
        "real_features_cov_sum",
        "real_features_num_samples",
        "fake_features_sum",
        "fake_features_cov_sum",
        "fake_features_num_samples",
    ):
        setattr(merged.fid, name, getattr(ranks[0].fid, name) + getattr(ranks[1].fid, name))
    torch.testing.assert_close(
        merged.compute()["fid"], fid_of(real, fake)["fid"], rtol=1e-9, atol=0
    )


def test_only_the_generated_side_is_reset():
    gen = torch.Generator().manual_seed(5)
    real, fake = torch.randn(300, 4, generator=gen), torch.randn(300, 4, generator=gen) * 2
    distances = distances_of(4, kid=False)
    distances.set_reference(reference_of(real))
    distances.update_features(fake)
    first = distances.compute()["fid"]
    distances.reset()
    assert int(distances.fid.fake_features_num_samples) == 0
    assert int(distances.fid.real_features_num_samples) == 300
    distances.update_features(fake)
    assert distances.compute()["fid"] == first


# --- the cache ---------------------------------------------------------------------------------


class CountingDigits(Digits):
    """Digits that count the passes over their real images."""

    passes = 0

    def val_dataloader(self):
        CountingDigits.passes += 1
        return super().val_dataloader()


def test_reference_statistics_are_computed_once_and_then_read_from_the_cache(tmp_path):
    CountingDigits.passes = 0
    network = load_features("digits")
    first = FeatureDistances(network, (1, 16, 16))
    stats = reference_statistics(
        CountingDigits(image_size=16, val_fraction=0.1), "val", first, tmp_path
    )
    assert CountingDigits.passes == 1 and stats.num_samples == 180
    assert stats.path.parent == tmp_path and stats.path.is_file()
    # A new run (fresh datamodule and metric) reads the file and never touches the images.
    again = reference_statistics(
        CountingDigits(image_size=16, val_fraction=0.1),
        "val",
        FeatureDistances(network, (1, 16, 16)),
        tmp_path,
    )
    assert CountingDigits.passes == 1
    torch.testing.assert_close(again.cov_sum, stats.cov_sum, rtol=0, atol=0)
    torch.testing.assert_close(again.features, stats.features, rtol=0, atol=0)
    # A truncated file is a cache miss, not a crash.
    stats.path.write_bytes(b"not a torch file")
    reference_statistics(CountingDigits(image_size=16, val_fraction=0.1), "val", first, tmp_path)
    assert CountingDigits.passes == 2
    # The real images of the val split against their own statistics: FID 0.
    first.set_reference(again)
    for batch in real_batches(Digits(image_size=16, val_fraction=0.1), "val"):
        first.update(batch)
    torch.testing.assert_close(first.compute()["fid"], 0.0, atol=1e-3, rtol=0)


def test_the_cache_key_changes_with_image_size_feature_network_split_and_data(tmp_path):
    digits, mnist = load_features("digits"), load_features("mnist")
    base = reference_path(
        reference_key(Digits(image_size=16, val_fraction=0.1), "val", digits), tmp_path
    )
    assert base == reference_path(
        reference_key(Digits(image_size=16, val_fraction=0.1, batch_size=7), "val", digits),
        tmp_path,
    )
    others = {
        reference_path(
            reference_key(Digits(image_size=8, val_fraction=0.1), "val", digits), tmp_path
        ),
        reference_path(
            reference_key(Digits(image_size=16, val_fraction=0.1), "val", mnist), tmp_path
        ),
        reference_path(
            reference_key(Digits(image_size=16, val_fraction=0.1), "train", digits), tmp_path
        ),
        reference_path(
            reference_key(Digits(image_size=16, val_fraction=0.2), "val", digits), tmp_path
        ),
    }
    assert base not in others and len(others) == 4
    # Other weights under the same name are another network.
    retrained = load_features("digits")
    with torch.no_grad():
        retrained.classifier.body[-2].bias.add_(1e-3)
    assert reference_key(Digits(image_size=16), "val", retrained) != reference_key(
        Digits(image_size=16), "val", digits
    )


def test_the_cache_folder_follows_genlit_cache_dir(monkeypatch, tmp_path):
    from genlit.metrics.fid import default_cache_dir

    monkeypatch.setenv("GENLIT_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "fid"
    monkeypatch.delenv("GENLIT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "genlit" / "fid"


# --- the callback ------------------------------------------------------------------------------


def tiny_gan() -> GAN:
    return GAN(
        DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=8),
        DCGANDiscriminator(channels=1, image_size=16, width=8),
    )


def fit(tmp_path: Path, callback: FID, val_fraction: float, epochs: int = 1) -> Trainer:
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(
        monitor="val/fid",
        mode="min",
        save_last=True,
        dirpath=tmp_path / "ckpt",
        every_n_epochs=callback.every_n_epochs,
    )
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback, checkpoint],
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(
        tiny_gan(), datamodule=Digits(image_size=16, batch_size=32, val_fraction=val_fraction)
    )
    return trainer


def test_the_callback_logs_fid_and_kid_at_validation_and_the_checkpoint_keeps_the_best(tmp_path):
    callback = FID(
        features="digits",
        split="val",
        num_samples=None,
        cache_dir=str(tmp_path / "cache"),
        kid_subsets=10,
    )
    trainer = fit(tmp_path, callback, val_fraction=0.1)
    metrics = trainer.callback_metrics
    assert {"val/fid", "val/kid_mean", "val/kid_std", "val/fid_num_samples"} <= set(metrics)
    assert float(metrics["val/fid_num_samples"]) == 180  # as many samples as real val images
    assert float(metrics["val/fid"]) == callback.last["fid"]
    # The same number from scratch: the val split's statistics (not the cached file), the final
    # weights, the callback's seeded noise; a wrong split, sample count or noise would differ.
    model = trainer.lightning_module
    distances = FeatureDistances(load_features("digits"), (1, 16, 16), kid=False)
    real = Digits(image_size=16, batch_size=32, val_fraction=0.1)
    distances.set_reference(reference_statistics(real, "val", distances, tmp_path / "recomputed"))
    assert distances.reference.num_samples == 180
    with seeded(model.device, callback.seed):
        generate_into(distances, model.sample, 180, callback.batch_size)
    torch.testing.assert_close(float(metrics["val/fid"]), distances.compute()["fid"], rtol=1e-6, atol=0)
    checkpoint = trainer.checkpoint_callback
    assert checkpoint.best_model_path and float(checkpoint.best_model_score) == callback.last["fid"]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert callback.reference_file.parent == tmp_path / "cache"


def test_the_callback_leaves_the_training_rng_alone_and_repeats_its_value(tmp_path):
    callback = FID(
        features="digits", split="val", num_samples=100, cache_dir=str(tmp_path), kid=False
    )
    trainer = fit(tmp_path, callback, val_fraction=0.1)
    model = trainer.lightning_module
    state = torch.random.get_rng_state()
    first = callback.measure(trainer, model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert callback.measure(trainer, model) == first  # same seeded noise, same weights


def test_without_a_validation_split_the_callback_runs_at_the_end_of_training_epochs(tmp_path):
    callback = FID(
        features="digits",
        split="train",
        num_samples=64,
        every_n_epochs=2,
        cache_dir=str(tmp_path),
        kid=False,
    )
    seen = []
    original = callback.evaluate
    callback.evaluate = lambda trainer, module, stage="val": (
        seen.append(trainer.current_epoch) or original(trainer, module, stage)
    )
    # No held-out split: one line says why the copying figures are missing; the FID is logged.
    with pytest.warns(UserWarning, match="no data-copying figures: Digits has no held-out split.*copying: off"):
        trainer = fit(tmp_path, callback, val_fraction=0.0, epochs=4)
    assert seen == [1, 3]
    assert float(trainer.callback_metrics["val/fid_num_samples"]) == 64
    assert "val/c_t" not in trainer.callback_metrics


def test_more_samples_than_real_images_are_capped_with_a_warning():
    callback = FID(features="digits", num_samples=5000)
    with pytest.warns(UserWarning, match="num_samples=5000 is more than the 180 real images"):
        assert callback.total_samples(180) == 180
    assert (
        FID(num_samples=None).total_samples(180) == 180
        and FID(num_samples=50).total_samples(180) == 50
    )


# --- genlit evaluate ---------------------------------------------------------------------------


def test_genlit_evaluate_repeats_the_callbacks_value_from_its_cache_and_reads_folders(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("GENLIT_CACHE_DIR", str(tmp_path / "cache"))
    config = REPO / "configs" / "quickstart.yaml"  # FID with the digits network at validation
    main(
        [
            "fit",
            "--config",
            str(config),
            "--generator_steps=2",
            "--trainer.limit_train_batches=2",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    summary = capsys.readouterr().out
    logged = summary.split("val/fid ")[1].split()[0]
    # the FID's train split, and the copying figures' held-out split (Digits tests on val)
    found = sorted((tmp_path / "cache" / "fid").glob("*.pt"))
    # and the copying figures' held-out side (1 k-means cell for 180 held-out digits)
    assert [p.name.split("-")[:2] for p in found] == [["Digits", "test"], ["Digits", "train"], ["copying", "1cells"]]
    assert "val/c_t " in summary and "val/nn_ratio " in summary  # at the final evaluation, by default
    cache_files = [p for p in found if "-train-" in p.name]

    ckpt = next(tmp_path.rglob("last.ckpt"))
    main(["evaluate", "--ckpt", str(ckpt), "--config", str(config)])
    report = capsys.readouterr().out
    assert report.startswith(f"genlit: FID {logged}, KID ")  # same weights, same seeded noise
    assert "1617 from" in report and "Digits train split, 1617 images of 1x16x16" in report
    assert "digits (genlit" in report and str(cache_files[0]) in report
    assert sorted((tmp_path / "cache" / "fid").glob("*.pt")) == found  # the run's statistics

    main(
        [
            "evaluate",
            "--ckpt",
            str(ckpt),
            "--config",
            str(config),
            "--split",
            "val",
            "--num_samples",
            "300",
            "--cache_dir",
            str(tmp_path / "other"),
        ]
    )
    report = capsys.readouterr().out
    assert "180 from" in report  # 300 asked, capped at the 180 real val images

    # The val images themselves, saved as PNG (lossless): FID 0 against the val split.
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    images = torch.cat(list(real_batches(Digits(image_size=16, val_fraction=0.1), "val")))
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")
    main(
        [
            "evaluate",
            "--images",
            str(folder),
            "--config",
            str(config),
            "--split",
            "val",
            "--cache_dir",
            str(tmp_path / "other"),
            "--no_kid",
        ]
    )
    report = capsys.readouterr().out
    fid = float(report.split("FID ")[1].split()[0].rstrip(","))
    assert abs(fid) < 1e-3 and "180 from" in report and "KID" not in report

    # The copying figures of the same held-out images: exactly as far from the training set
    # as themselves (ratio 1, C_T about 0); of 180 training images: copies (ratio 0).
    copies = tmp_path / "copies"
    copies.mkdir()
    train = torch.cat(list(real_batches(Digits(image_size=16, val_fraction=0.1), "train")))[:180]
    for i, image in enumerate(train):
        Image.fromarray(image[0].numpy()).save(copies / f"{i:04d}.png")
    found = {}
    for name, source in (("held_out", folder), ("copies", copies)):
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", "--images", str(source), "--config", str(config), "--split", "val",
                "--cache_dir", str(tmp_path / "other"), "--no_kid", "--copying", "--json", str(out)]
        if name == "copies":
            argv += ["--neighbours", str(tmp_path / "neighbours.png")]
        main(argv)
        assert "  copying     C_T " in capsys.readouterr().out
        found[name] = json.loads(out.read_text())["copying"]
    assert found["held_out"]["nn_ratio"] == pytest.approx(1.0) and abs(found["held_out"]["c_t"]) < 1
    assert found["copies"]["nn_ratio"] == 0.0 and found["copies"]["c_t"] < -10
    assert found["copies"]["closer_share"] == 1.0
    assert Image.open(tmp_path / "neighbours.png").size[0] > 8 * 16


def test_genlit_evaluate_errors_are_one_line(tmp_path, capsys):
    config = REPO / "configs" / "digits" / "nsgan.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "evaluate",
                "--images",
                str(tmp_path),
                "--config",
                str(config),
                "--cache_dir",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genlit: error: no images") and "\n" not in err


def test_a_user_feature_network_module_works_end_to_end(tmp_path):
    class Pool(nn.Module):
        def forward(self, images):
            return nn.functional.avg_pool2d(images.float(), 4).flatten(1)  # (B, 16)

    distances = FeatureDistances(load_features(Pool()), (1, 16, 16), kid=False)
    assert distances.num_features == 16
    stats = reference_statistics(
        Digits(image_size=16, val_fraction=0.1), "val", distances, tmp_path
    )
    distances.set_reference(stats)
    for batch in real_batches(Digits(image_size=16, val_fraction=0.1), "val"):
        distances.update(batch)
    torch.testing.assert_close(distances.compute()["fid"], 0.0, atol=1e-2, rtol=0)
