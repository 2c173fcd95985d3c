"""Feature networks: the shipped classifiers, user modules, Inception online, offline and from a file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genlit.errors import GenlitError
from genlit.metrics.features import (
    INCEPTION_WEIGHTS_FILE,
    WEIGHTS_DIR,
    ClassifierFeatures,
    InceptionFeatures,
    ModuleFeatures,
    load_features,
)


class MeanPool(nn.Module):
    """A user feature network, loadable by import path: 4x4 average pooling of the pixels."""

    def forward(self, images):
        return nn.functional.avg_pool2d(images.float(), 4).flatten(1)


def read_idx(raw: Path, prefix: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images (uint8 (n, 1, 28, 28)) and labels of IDX files, read without extracting."""
    images = np.frombuffer(
        gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz").read(), np.uint8, offset=16
    )
    labels = np.frombuffer(
        gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8
    )
    return torch.from_numpy(images[: n * 784].reshape(n, 1, 28, 28).copy()), torch.from_numpy(
        labels[:n].astype(np.int64)
    )


# --- genlit's classifiers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,size,accuracy", [("digits", 16, 0.95), ("mnist", 28, 0.99), ("fashion_mnist", 28, 0.90)]
)
def test_the_shipped_classifiers_are_small_accurate_and_give_128_features(name, size, accuracy):
    path = WEIGHTS_DIR / f"{name}.pt"
    assert path.stat().st_size < 500_000
    saved = torch.load(path, weights_only=True)
    assert all(
        t.dtype == torch.float16 for t in saved["state_dict"].values() if t.is_floating_point()
    )
    assert saved["test_accuracy"] >= accuracy
    network = load_features(name)
    assert isinstance(network, ClassifierFeatures) and network.classifier.input_size == size
    images = torch.randint(0, 256, (5, 1, size, size), dtype=torch.uint8)
    features = network(images)
    assert features.shape == (5, 128) and features.dtype == torch.float32
    torch.testing.assert_close(network(images[:2]), features[:2])  # eval mode: per-sample
    assert not any(p.requires_grad for p in network.parameters())
    network.train()
    assert not network.training  # batch-norm statistics never move


def test_a_classifier_takes_other_sizes_and_rgb_the_same_way_for_every_image():
    network = load_features("mnist")
    grey = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    assert network(grey).shape == (3, 128)
    rgb = grey.expand(-1, 3, -1, -1)  # equal channels: the same grey image
    torch.testing.assert_close(network(rgb), network(grey), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name,folder,minimum", [("mnist", "MNIST", 0.985), ("fashion_mnist", "FashionMNIST", 0.88)]
)
def test_the_classifiers_recognise_the_real_test_images(shared_data, name, folder, minimum):
    images, labels = read_idx(shared_data / folder / "raw", "t10k", 2000)
    network = load_features(name)
    with torch.no_grad():
        from genlit.metrics.features import prepare_images

        x = prepare_images(images, 1, 28)
        predicted = network.classifier(x).argmax(dim=1)
    assert (predicted == labels).float().mean() >= minimum


# --- by name, by import path, by module --------------------------------------------------------


def test_a_user_module_by_import_path_or_instance():
    by_path = load_features("test_features.MeanPool")
    assert isinstance(by_path, ModuleFeatures) and by_path.name == "test_features.MeanPool"
    assert by_path.output_dim((1, 16, 16)) == 16 and by_path.output_dim((3, 32, 32)) == 192
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(by_path(images), load_features(MeanPool())(images))


def test_a_user_module_with_weights_loads_them_and_its_fingerprint_follows_them(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    loaded = load_features("torch.nn.Identity")
    assert isinstance(loaded, ModuleFeatures)
    a, b = ModuleFeatures(net), ModuleFeatures(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    assert a.fingerprint() != b.fingerprint()
    b.module.load_state_dict(torch.load(tmp_path / "w.pt"))
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("spec", ["mnsit", "no_such_module.Net", "torch.nn.NoSuchLayer"])
def test_an_unknown_feature_network_is_one_line_naming_the_choices(spec):
    with pytest.raises(GenlitError) as err:
        load_features(spec)
    message = str(err.value)
    assert (
        "\n" not in message
        and spec in message
        and "inception, digits, mnist, fashion_mnist" in message
    )


# --- Inception ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_network")
def test_offline_inception_without_weights_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(GenlitError) as err:
        load_features("inception")
    message = str(err.value)
    assert "\n" not in message
    assert INCEPTION_WEIGHTS_FILE in message  # the file
    assert str(tmp_path / "hub" / "checkpoints") in message  # the folder it was looked for in
    assert "weights_path" in message  # the argument to set
    with pytest.raises(GenlitError, match="does not exist"):
        load_features("inception", weights_path=tmp_path / "missing.pth")


@pytest.mark.usefixtures("no_network")
def test_inception_loads_its_weights_from_a_given_file(monkeypatch, tmp_path):
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3

    # Build the network without weights (its own random initialisation) and save that state.
    with monkeypatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(
            fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None
        )
        untrained = NoTrainInceptionV3("inception-v3-compat", ["2048"])
    with torch.no_grad():
        untrained.fc.bias.normal_()  # nothing about the default init is special
    path = tmp_path / "inception.pth"
    torch.save(untrained.state_dict(), path)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # nothing to find elsewhere
    network = load_features("inception", weights_path=path)
    assert isinstance(network, InceptionFeatures)
    for key, value in untrained.state_dict().items():
        torch.testing.assert_close(network.net.state_dict()[key], value, rtol=0, atol=0)
    assert network.net.use_antialias is False  # TF 1 bilinear resize, as in published FIDs
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    features = network(grey)
    assert features.shape == (2, 2048)
    torch.testing.assert_close(features, network(grey.expand(-1, 3, -1, -1)))
