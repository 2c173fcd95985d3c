"""DCGAN generator and discriminator: shapes, ranges, normalisation options and error messages."""

import pytest
import torch
from torch import nn

from genlit.networks.dcgan import (
    SUPPORTED_IMAGE_SIZES,
    DCGANDiscriminator,
    DCGANGenerator,
    dcgan_init_,
)

BATCH = 4
# Small widths keep the 64x64 cases fast; the architecture is the same at any width.
WIDTH = 8


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_generator_shape_and_range(image_size: int, channels: int) -> None:
    generator = DCGANGenerator(latent_dim=16, channels=channels, image_size=image_size, width=WIDTH)
    assert (generator.latent_dim, generator.channels, generator.image_size) == (
        16,
        channels,
        image_size,
    )
    # Large z pushes the tanh towards saturation, where an unbounded output would show.
    fake = generator(10 * torch.randn(BATCH, 16))
    assert fake.shape == (BATCH, channels, image_size, image_size)
    assert fake.min() >= -1.0 and fake.max() <= 1.0
    assert fake.std() > 0  # not a constant image


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_discriminator_shape(image_size: int, channels: int) -> None:
    discriminator = DCGANDiscriminator(channels=channels, image_size=image_size, width=WIDTH)
    assert (discriminator.channels, discriminator.image_size) == (channels, image_size)
    scores = discriminator(torch.randn(BATCH, channels, image_size, image_size))
    assert scores.shape == (BATCH,)
    assert torch.isfinite(scores).all()


def test_discriminator_scores_are_unbounded_logits() -> None:
    # No sigmoid at the end: scaling the last layer must scale the score past [0, 1].
    discriminator = DCGANDiscriminator(width=WIDTH).eval()
    with torch.no_grad():
        discriminator.net[-1].weight.mul_(1e3)
        scores = discriminator(torch.randn(BATCH, 1, 28, 28))
    assert scores.abs().max() > 1.0


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_spectral_norm_bounds_every_layer(image_size: int) -> None:
    discriminator = DCGANDiscriminator(
        channels=3, image_size=image_size, width=WIDTH, spectral_norm=True
    ).train()
    for _ in range(5):  # each train-mode forward runs one more power iteration
        discriminator(torch.randn(BATCH, 3, image_size, image_size))
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    with torch.no_grad():
        for conv in convs:
            weight = conv.weight.reshape(conv.out_channels, -1)
            sigma = torch.linalg.matrix_norm(weight, ord=2)
            assert abs(sigma.item() - 1.0) < 0.1, f"{conv}: largest singular value {sigma}"


def test_spectral_norm_keeps_dcgan_init_on_raw_weight() -> None:
    discriminator = DCGANDiscriminator(image_size=64, width=32, spectral_norm=True)
    raw = torch.cat(
        [
            m.parametrizations.weight.original.flatten()
            for m in discriminator.modules()
            if isinstance(m, nn.Conv2d)
        ]
    )
    torch.testing.assert_close(raw.std(), torch.tensor(0.02), atol=1e-3, rtol=0)


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_discriminator_without_batch_norm(image_size: int) -> None:
    critic = DCGANDiscriminator(image_size=image_size, width=WIDTH, batch_norm=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    # What a WGAN-GP critic needs: a sample's score does not depend on the rest of the batch.
    real = torch.randn(BATCH, 1, image_size, image_size)
    torch.testing.assert_close(critic.train()(real)[:1], critic(real[:1]))


def test_discriminator_with_batch_norm_has_it_after_the_first_block() -> None:
    discriminator = DCGANDiscriminator(image_size=64, width=WIDTH)
    layers = list(discriminator.net)
    norms = [i for i, m in enumerate(layers) if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 3  # 64 -> 32 -> 16 -> 8 -> 4: every downsampling block but the first
    assert not isinstance(layers[1], nn.BatchNorm2d)


@pytest.mark.parametrize("bad_size", [30, 0, 128])
@pytest.mark.parametrize("cls", [DCGANGenerator, DCGANDiscriminator])
def test_unsupported_image_size(cls: type[nn.Module], bad_size: int) -> None:
    with pytest.raises(ValueError) as info:
        cls(image_size=bad_size)
    message = str(info.value)
    assert f"image_size={bad_size}" in message
    assert "8, 16, 28, 32, 64" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (DCGANGenerator, {"latent_dim": 0}, "latent_dim"),
        (DCGANGenerator, {"channels": 0}, "channels"),
        (DCGANGenerator, {"width": 0}, "width"),
        (DCGANDiscriminator, {"channels": -1}, "channels"),
        (DCGANDiscriminator, {"width": 0}, "width"),
    ],
)
def test_non_positive_dimensions(cls: type[nn.Module], kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_discriminator_rejects_mismatched_input() -> None:
    discriminator = DCGANDiscriminator(channels=1, image_size=28, width=WIDTH)
    with pytest.raises(ValueError) as info:
        discriminator(torch.randn(BATCH, 3, 32, 32))
    message = str(info.value)
    assert "built for 1x28x28 images but got 3x32x32" in message
    assert "channels/image_size" in message
    with pytest.raises(ValueError, match="1x28x28"):
        discriminator(torch.randn(BATCH, 1, 32, 32))
    with pytest.raises(ValueError, match="1x28x28"):
        discriminator(torch.randn(BATCH, 3, 28, 28))
    with pytest.raises(ValueError, match="1x28x28"):
        discriminator(torch.randn(BATCH, 28 * 28))


def test_generator_rejects_wrong_latent_dim() -> None:
    generator = DCGANGenerator(latent_dim=16, width=WIDTH)
    with pytest.raises(ValueError, match="16"):
        generator(torch.randn(BATCH, 100))


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_gradients_reach_every_generator_parameter(image_size: int) -> None:
    generator = DCGANGenerator(latent_dim=16, channels=3, image_size=image_size, width=WIDTH)
    generator(torch.randn(BATCH, 16)).sum().backward()
    for name, param in generator.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_dcgan_init() -> None:
    generator = DCGANGenerator(image_size=64, channels=3)
    convs = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    conv_weights = torch.cat([m.weight.flatten() for m in convs])
    norm_weights = torch.cat([m.weight.flatten() for m in norms])
    torch.testing.assert_close(conv_weights.mean(), torch.tensor(0.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(conv_weights.std(), torch.tensor(0.02), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm_weights.mean(), torch.tensor(1.0), atol=5e-3, rtol=0)
    torch.testing.assert_close(norm_weights.std(), torch.tensor(0.02), atol=5e-3, rtol=0)
    for module in [*convs, *norms]:
        if module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0

    # Applied to a freshly built layer, it overwrites PyTorch's default (uniform) init.
    linear = nn.Linear(256, 256)
    dcgan_init_(linear)
    torch.testing.assert_close(linear.weight.std(), torch.tensor(0.02), atol=1e-3, rtol=0)
    assert torch.count_nonzero(linear.bias) == 0
