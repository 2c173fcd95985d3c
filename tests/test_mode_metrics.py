"""Mode collapse and mixture on images: class coverage, Stacked MNIST, precision and recall,
density and coverage, the Inception-free parts of ``genlit evaluate``, and that none of the
new callbacks changes training."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from fakedata import make_mnist
from tiny import PooledFeatures

from datamodules.images import MNIST, Digits, StackedMNIST
from genlit.callbacks import FID, ClassCoverage, LatentPictures
from genlit.errors import GenlitError
from genlit.metrics.classes import (
    ClassCounter,
    class_histogram,
    class_statistics,
    stacked_predictions,
)
from genlit.metrics.features import load_features
from genlit.metrics.fid import real_batches, real_labels, reference_key, to_uint8
from genlit.metrics.manifold import knn_radii, manifold_statistics
from genlit.models import GAN, VAE
from genlit.networks.autoencoders import ConvDecoder, ConvEncoder
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """A writable copy of ../shared/data/MNIST (torchvision extracts next to the archives)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST"
    if not shared.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(shared, root / "MNIST")
    for path in (root / "MNIST").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def mnist_test(mnist_root) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 MNIST test images (uint8) and labels."""
    datamodule = MNIST(root=str(mnist_root), batch_size=1000)
    return torch.cat(list(real_batches(datamodule, "test"))), real_labels(datamodule, "test")


# --- class statistics by hand ---------------------------------------------------------------------


def test_one_class_gives_one_covered_class_and_the_kl_of_a_one_hot_histogram():
    reference = torch.tensor([0.1, 0.2, 0.3, 0.4])
    stats = class_statistics(torch.full((50,), 2), torch.ones(50), 4, reference)
    assert stats.classes == 1
    assert stats.kl == pytest.approx(math.log(1 / 0.3))
    assert stats.confident == 1.0


def test_class_share_histogram_matches_and_thresholds():
    predicted = torch.tensor([0] * 60 + [1] * 39 + [2])  # class 2: 1% of the samples
    confidence = torch.tensor([0.95] * 50 + [0.5] * 50)
    stats = class_statistics(predicted, confidence, 3, min_fraction=0.02)
    assert stats.classes == 2  # class 2 is below 2%
    p = torch.tensor([0.6, 0.39, 0.01], dtype=torch.float64)
    assert stats.kl == pytest.approx(float((p * (p * 3).log()).sum()))  # KL to uniform
    assert stats.confident == 0.5
    assert class_statistics(predicted, confidence, 3, min_fraction=0).classes == 3


def test_a_class_the_data_lacks_makes_the_kl_infinite():
    stats = class_statistics(torch.tensor([0, 1]), torch.ones(2), 2, torch.tensor([1.0, 0.0]))
    assert stats.kl == math.inf


def test_stacked_predictions_read_the_channels_as_digits():
    logits = torch.full((2, 3, 10), -10.0)
    for i, digits in enumerate([(4, 0, 7), (9, 9, 1)]):
        for channel, digit in enumerate(digits):
            logits[i, channel, digit] = 10.0
    classes, confidence = stacked_predictions(logits)
    assert classes.tolist() == [407, 991]
    assert torch.all(confidence > 0.99)


# --- on real MNIST ------------------------------------------------------------------------------


def test_real_test_images_cover_all_ten_classes_with_a_kl_near_zero(mnist_test):
    images, labels = mnist_test
    counter = ClassCounter("mnist", reference=class_histogram(labels, 10))
    counter.update(images)
    stats = counter.compute()
    assert stats.classes == 10
    assert stats.kl < 1e-4  # measured 9.2e-6: the classifier's errors nearly cancel
    assert stats.confident > 0.97  # measured 0.983


def test_a_generator_of_one_class_covers_one_class(mnist_test):
    images, labels = mnist_test
    reference = class_histogram(labels, 10)
    threes = images[labels == 3]
    counter = ClassCounter("mnist", reference=reference)
    counter.update(threes)  # every test 3: the classifier's rare errors stay under 1%
    stats = counter.compute()
    assert stats.classes == 1
    assert stats.kl == pytest.approx(-math.log(reference[3]), abs=0.05)
    counter.reset()
    counter.update(threes[:1].repeat(500, 1, 1, 1))  # a collapsed generator: one image
    collapsed = counter.compute()
    assert collapsed.classes == 1
    assert collapsed.kl == pytest.approx(-math.log(float(reference[3])), rel=1e-9)  # one-hot


def test_real_stacked_mnist_covers_nearly_all_thousand_modes(mnist_root):
    covered = {}
    for n in (10000, 26000):
        datamodule = StackedMNIST(root=str(mnist_root), num_images=n, batch_size=2000)
        counter = ClassCounter("mnist", stacked=True)
        for batch in real_batches(datamodule, "train"):
            counter.update(batch)
        stats = counter.compute()
        covered[n] = stats
    # measured: 1,000 of 1,000 at both sizes; KL 0.055 (10k) and 0.023 (26k): sampling noise
    assert covered[10000].classes >= 995 and covered[26000].classes >= 998
    assert covered[26000].kl < covered[10000].kl < 0.1


def test_precision_and_recall_of_real_against_real_and_against_noise(mnist_test):
    images, _ = mnist_test
    features = load_features("mnist")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    first, second = features(images[order[:5000]]), features(images[order[5000:]])
    real = manifold_statistics(first, second)
    # measured: precision 0.953, recall 0.951, density 0.986, coverage 0.967
    assert min(real.precision, real.recall, real.coverage) > 0.9 and 0.85 < real.density < 1.15
    noise = torch.randint(0, 256, (2000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    fake = manifold_statistics(first, features(noise))
    assert max(fake.precision, fake.recall, fake.density, fake.coverage) < 0.05


# --- precision, recall, density and coverage by hand ----------------------------------------------


def test_density_and_coverage_on_points_on_a_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # 1-NN radius 1 everywhere
    fake = torch.tensor([[0.5], [10.0]])  # 0.5 lies in the balls of 0 and 1
    stats = manifold_statistics(real, fake, nearest_k=1)
    assert knn_radii(real, 1).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert stats.precision == 0.5 and stats.density == pytest.approx(1.0)  # (2 + 0) / 2 / k
    assert stats.coverage == 0.5  # the balls of 0 and 1 hold a sample


def test_matches_the_reference_prdc_package():
    prdc = pytest.importorskip("prdc")
    torch.manual_seed(0)
    real, fake = torch.randn(500, 8), torch.randn(400, 8) + 0.3
    ours = manifold_statistics(real, fake, 5)
    theirs = prdc.compute_prdc(real.numpy(), fake.numpy(), 5)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, name) == pytest.approx(float(theirs[name]), abs=1e-6)


# --- Stacked MNIST datamodule ---------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_stacked_mnist_stacks_three_digits_and_labels_them(tmp_path, in_memory):
    make_mnist(tmp_path, "MNIST", n_train=30, n_test=12)
    digits = MNIST(root=str(tmp_path), batch_size=30, download=False)
    digits.setup("fit")
    single = {int(i): image for i, image in enumerate(torch.cat(list(real_batches(digits, "train"))))}
    labels = real_labels(digits, "train")
    stacked = StackedMNIST(root=str(tmp_path), num_images=40, batch_size=8, download=False, in_memory=in_memory)
    images = torch.cat(list(real_batches(stacked, "train")))
    assert images.shape == (40, 3, 28, 28) and stacked.dims == (3, 28, 28)
    triples = stacked._triples("train", 30)
    for row in range(40):
        for channel in range(3):
            assert torch.equal(images[row, channel], single[int(triples[row, channel])][0])
    expected = (labels[triples] * torch.tensor([100, 10, 1])).sum(1)
    assert torch.equal(real_labels(stacked, "train"), expected)
    test = torch.cat(list(real_batches(stacked, "test")))
    assert len(test) == 40 and not torch.equal(test, images)


def test_stacked_mnist_triples_are_part_of_the_fid_reference_key(tmp_path):
    make_mnist(tmp_path, "MNIST")
    network = load_features(PooledFeatures())
    keys = [
        reference_key(StackedMNIST(root=str(tmp_path), download=False, stack_seed=s, num_images=n), "test", network)
        for s, n in ((0, None), (1, None), (0, 100))
    ]
    assert keys[0] != keys[1] and keys[0] != keys[2]


def test_stacked_mnist_refuses_no_images(tmp_path):
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        StackedMNIST(root=str(tmp_path), num_images=0)


# --- the callbacks --------------------------------------------------------------------------------


def tiny_gan(channels: int = 1) -> GAN:
    L.seed_everything(0)  # the same initial weights every time
    return GAN(DCGANGenerator(8, channels, 8, 8), DCGANDiscriminator(channels, 8, 8))


def tiny_vae() -> VAE:
    L.seed_everything(0)
    return VAE(ConvEncoder(1, 8, 4, 8, gaussian=True), ConvDecoder(4, 1, 8, 8))


def fit(model, root: Path, callbacks: list, val_fraction: float = 0.0) -> L.Trainer:
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks, num_sanity_val_steps=0,
        limit_val_batches=0 if not val_fraction else 1.0,
    )  # fmt: skip
    trainer.fit(model, Digits(image_size=8, batch_size=32, val_fraction=val_fraction))
    return trainer


def new_callbacks(cache: Path) -> list:
    return [
        ClassCoverage(classifier="digits", num_samples=200, split="train"),
        FID(features="digits", num_samples=200, split="train", kid=False, precision_recall=True,
            cache_dir=str(cache)),
        LatentPictures(size=4, pairs=2, steps=3, num_images=64),
    ]  # fmt: skip


@pytest.mark.parametrize("make", [tiny_gan, tiny_vae], ids=["gan", "vae"])
def test_the_new_callbacks_leave_training_bitwise_unchanged(tmp_path, make):
    plain = make()
    fit(plain, tmp_path / "a", [], val_fraction=0.2)
    watched = make()
    trainer = fit(watched, tmp_path / "b", new_callbacks(tmp_path / "cache"), val_fraction=0.2)
    for p, q in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    metrics = trainer.callback_metrics
    for key in ("val/classes", "val/kl_classes", "val/confident", "val/precision", "val/recall",
                "val/density", "val/coverage"):  # fmt: skip
        assert key in metrics, key
    assert sorted(p.name.split("_step")[0] for p in (tmp_path / "b" / "latents").iterdir()) == [
        "interpolation", "interpolation", "plane", "plane"]  # both epochs


def test_logged_class_coverage_is_that_of_the_seeded_samples(tmp_path):
    coverage = ClassCoverage(classifier="digits", num_samples=300, split="train", seed=5)
    model = tiny_gan()
    trainer = fit(model, tmp_path, [coverage])
    counter = ClassCounter("digits", reference=coverage.counter.reference)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        counter.update(to_uint8(model.sample(300)))
    expected = counter.compute()
    assert trainer.callback_metrics["val/classes"].item() == expected.classes
    assert trainer.callback_metrics["val/kl_classes"].item() == pytest.approx(expected.kl, rel=1e-5)


def test_fid_precision_recall_are_those_of_the_same_features(tmp_path):
    fid = FID(features="digits", num_samples=300, split="train", kid=False, precision_recall=True,
              cache_dir=str(tmp_path / "cache"))  # fmt: skip
    model = tiny_gan()
    trainer = fit(model, tmp_path, [fid])
    real = fid.distances.reference.features
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fake = fid.network(to_uint8(model.sample(300)))
    expected = manifold_statistics(real, fake, 5)
    for name in ("precision", "recall", "density", "coverage"):
        assert trainer.callback_metrics[f"val/{name}"].item() == pytest.approx(getattr(expected, name), abs=1e-6)


def test_stacked_coverage_refuses_one_channel_samples(tmp_path):
    with pytest.raises(GenlitError, match="3-channel samples"):
        fit(tiny_gan(), tmp_path, [ClassCoverage(stacked=True, num_samples=10)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classifier": "inception"}, "genlit's classifiers"),
        ({"classifier": "digits", "stacked": True}, "mnist classifier"),
        ({"threshold": 0.0}, "threshold must be in"),
        ({"min_fraction": 1.0}, "min_fraction must be in"),
    ],
)
def test_class_coverage_refuses_bad_settings_in_one_line(kwargs, message):
    with pytest.raises(GenlitError, match=message) as info:
        ClassCoverage(**kwargs)
    assert "\n" not in str(info.value)


# --- latent pictures ------------------------------------------------------------------------------


def test_a_two_dimensional_plane_is_the_gaussian_quantile_grid():
    from genlit.callbacks.latents import latent_plane

    plane = latent_plane(None, 2, 3, quantile=0.1)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.1, 0.5, 0.9]))
    assert plane.shape == (9, 2)
    torch.testing.assert_close(plane[:3, 0], q)  # the first row runs along the first axis
    torch.testing.assert_close(plane[::3, 1], -q)  # top to bottom: high to low


def test_the_plane_spans_the_codes_leading_directions():
    from genlit.callbacks.latents import latent_plane

    torch.manual_seed(0)
    first = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, 0.0, -1.0]), dim=0)
    second = torch.nn.functional.normalize(torch.tensor([2.0, -1.0, 1.0, 0.0]), dim=0)
    weights = torch.randn(4000, 2)
    codes = 3 * weights[:, :1] * first + weights[:, 1:] * second + 0.01 * torch.randn(4000, 4) + 5
    plane = latent_plane(codes, 4, 5)  # quantiles 0.05 ... 0.95: +-1.645 std
    centred = plane - codes.mean(0)
    assert (centred @ first).abs().max() == pytest.approx(3 * 1.645, rel=0.05)
    assert (centred @ second).abs().max() == pytest.approx(1.645, rel=0.05)
    residual = centred - torch.outer(centred @ first, first) - torch.outer(centred @ second, second)
    assert residual.abs().max() < 0.05  # nothing off the plane


def test_interpolation_keeps_the_ends_and_slerp_the_norm():
    from genlit.callbacks.latents import interpolate

    start, end = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for mode in ("linear", "slerp"):
        path = interpolate(start, end, 5, mode)
        assert torch.allclose(path[0], start[0]) and torch.allclose(path[-1], end[0], atol=1e-6)
    torch.testing.assert_close(interpolate(start, end, 5, "slerp").norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("make", [tiny_gan, tiny_vae], ids=["gan", "vae"])
def test_latent_pictures_of_the_model_families(tmp_path, make):
    pictures = LatentPictures(size=3, pairs=2, steps=4, num_images=32)
    model = make()
    trainer = fit(model, tmp_path, [pictures], val_fraction=0.2)
    images = pictures.pictures(trainer, model)
    assert images["plane"].shape == (9, 1, 8, 8) and images["interpolation"].shape == (8, 1, 8, 8)
    assert images["plane"].std(0).mean() > 0  # the plane's images differ
    for name in ("plane", "interpolation"):
        assert pictures.last_paths[name].name == f"{name}_step_000006.png"  # 2 epochs x 3 batches


def test_latent_pictures_rng_untouched(tmp_path):
    pictures = LatentPictures(size=3, pairs=2, steps=4)
    model = tiny_gan()
    trainer = fit(model, tmp_path, [])
    state = torch.get_rng_state()
    pictures.draw(trainer, model)
    assert torch.equal(torch.get_rng_state(), state)
    assert pictures.last_paths["plane"].is_file()


# --- Inception Score ------------------------------------------------------------------------------


class _OneHotLogits(torch.nn.Module):
    """A stand-in for Inception's logits: class = the image's first pixel value mod 4, confidently."""

    def __init__(self, weights_path=None) -> None:
        super().__init__()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(images[:, 0, 0, 0].long() % 4, 1008).float() * 50


def test_inception_score_of_confident_even_classes_is_their_number(monkeypatch):
    from genlit.metrics import features
    from genlit.metrics.fid import InceptionScoreSide

    monkeypatch.setattr(features, "InceptionLogits", _OneHotLogits)
    scorer = InceptionScoreSide(splits=2)
    images = torch.arange(400).remainder(4).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    scorer.update(images.contiguous())
    state = torch.get_rng_state()
    assert scorer.compute()["is_mean"] == pytest.approx(4.0, rel=0.01)  # exp(H(y)), 4 even classes
    assert torch.equal(torch.get_rng_state(), state)
    scorer.reset()
    scorer.update(torch.zeros(100, 1, 8, 8, dtype=torch.uint8))
    assert scorer.compute()["is_mean"] == pytest.approx(1.0, rel=1e-3)  # one class: collapse


@pytest.mark.usefixtures("no_network")
def test_inception_score_without_the_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    callback = FID(features="digits", inception_score=True, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(GenlitError, match="FID inception_score: the Inception weights") as info:
        fit(tiny_gan(), tmp_path, [callback])
    assert "\n" not in str(info.value)


# --- genlit evaluate ------------------------------------------------------------------------------


def test_evaluate_reports_class_coverage_and_precision_recall_of_a_folder(tmp_path, capsys, monkeypatch):
    from PIL import Image
    from tiny import run_in_process

    monkeypatch.setenv("GENLIT_CACHE_DIR", str(tmp_path / "cache"))
    datamodule = Digits(image_size=16, batch_size=500)  # the config's size
    images = torch.cat(list(real_batches(datamodule, "train")))[:600]
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "nsgan.yaml"
    code, out, err = run_in_process(
        capsys, "evaluate", "--images", str(folder), "--config", str(config),
        "--classes", "digits", "--precision_recall", "--no_kid",
    )  # fmt: skip
    assert code == 0, err
    assert "classes     10/10 covered" in out
    line = next(line for line in out.splitlines() if "precision" in line)
    precision = float(line.split("precision ")[1].split(",")[0])
    assert precision > 0.9  # real digits against all the real digits


def test_evaluate_refuses_stacked_without_the_mnist_classifier(tmp_path, capsys):
    from tiny import run_in_process

    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "nsgan.yaml"
    code, _, err = run_in_process(capsys, "evaluate", "--images", str(tmp_path), "--config", str(config), "--stacked")
    assert code != 0
    assert "--stacked labels each channel with the MNIST classifier: add --classes mnist" in err
