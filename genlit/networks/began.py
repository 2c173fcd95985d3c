"""BEGAN's networks (Berthelot, Schumm and Metz, 2017, arXiv:1703.10717, Figure 1).

The discriminator is an autoencoder: an encoder of 3x3 ELU convolutions, whose channels grow
by ``width`` at each level and whose resolution halves between levels (strided 3x3 convolutions),
down to an embedding of ``hidden_dim`` values; and a decoder of the same shape as the generator.
The generator (and the decoder) project to ``width`` channels at 8x8 (7x7 for 28x28 images), then
alternate two 3x3 ELU convolutions with a nearest-neighbour 2x upsampling up to the image size.
The discriminator's decoder ends in tanh, so that its reconstructions have the data's range
[-1, 1] and BEGAN compares real images and reconstructions in the same normalisation. The
generator ends linearly, as in the paper: a tanh there saturates. On MNIST a tanh generator
turned out all-black images within one epoch, at pre-activations near -15, where tanh passes a
gradient of about 1e-12, so it could not leave them; a linear output keeps its gradient, and values outside [-1, 1]
cost it reconstruction error (``BEGAN.sample`` clamps them).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["SUPPORTED_IMAGE_SIZES", "BEGANAutoencoder", "BEGANDecoder", "BEGANEncoder"]

SUPPORTED_IMAGE_SIZES: tuple[int, ...] = (8, 16, 28, 32, 64, 128)


def _levels(owner: str, image_size: int) -> tuple[int, int]:
    """(start_size, levels): the smallest feature map and the number of resolutions from it.

    Raises:
        ValueError: If ``image_size`` is not in ``SUPPORTED_IMAGE_SIZES``.
    """
    if image_size not in SUPPORTED_IMAGE_SIZES:
        sizes = ", ".join(str(s) for s in SUPPORTED_IMAGE_SIZES)
        raise ValueError(
            f"{owner} does not support image_size={image_size}; supported sizes are {sizes}: "
            "set data.image_size to one of these or resize your data."
        )
    start = 7 if image_size == 28 else 8
    return start, (image_size // start).bit_length()


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner} needs {name} >= 1 but got {name}={value}.")


def _conv(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, 3, stride, 1)


class BEGANDecoder(nn.Module):
    """BEGAN's generator (and the decoder half of its discriminator): ``(B, latent_dim)`` to
    images ``(B, channels, size, size)``.

    Args:
        latent_dim: Size of the input code (the noise of the generator, the discriminator's
            embedding ``h``).
        channels: Channels of the images.
        image_size: Side of the square images: 8, 16, 28, 32, 64 or 128.
        width: Channels ``n`` of every convolution (the paper's 64 or 128).
        output: The last layer's activation: ``linear`` (the paper's, and the generator's
            default) or ``tanh`` (outputs in [-1, 1], the discriminator's decoder).
    """

    def __init__(
        self,
        latent_dim: int = 64,
        channels: int = 3,
        image_size: int = 64,
        width: int = 64,
        output: Literal["linear", "tanh"] = "linear",
    ) -> None:
        super().__init__()
        _check_positive(type(self).__name__, latent_dim=latent_dim, channels=channels, width=width)
        start, levels = _levels(type(self).__name__, image_size)
        self.latent_dim = latent_dim
        self.channels = channels
        self.image_size = image_size
        self.start = start
        self.width = width
        self.project = nn.Linear(latent_dim, width * start * start)
        blocks: list[nn.Module] = []
        for level in range(levels):
            blocks += [_conv(width, width), nn.ELU(), _conv(width, width), nn.ELU()]
            if level < levels - 1:
                blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
        if output not in ("linear", "tanh"):
            raise ValueError(f"BEGANDecoder: output must be 'linear' or 'tanh', got {output!r}")
        blocks += [_conv(width, channels), nn.Tanh()] if output == "tanh" else [_conv(width, channels)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], self.width, self.start, self.start)
        return self.blocks(x)


class BEGANEncoder(nn.Module):
    """The encoder half of BEGAN's discriminator: images to ``(B, hidden_dim)`` embeddings.

    Args:
        channels: Channels of the images.
        image_size: Side of the square images: 8, 16, 28, 32, 64 or 128.
        width: Channels ``n`` of the first level; level ``i`` has ``i * n``.
        hidden_dim: Size of the embedding ``h``.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 64, hidden_dim: int = 64) -> None:
        super().__init__()
        _check_positive(type(self).__name__, channels=channels, width=width, hidden_dim=hidden_dim)
        start, levels = _levels(type(self).__name__, image_size)
        self.channels = channels
        self.image_size = image_size
        self.hidden_dim = hidden_dim
        layers: list[nn.Module] = [_conv(channels, width), nn.ELU()]
        inputs = width
        for level in range(1, levels + 1):
            outputs = width * level
            layers += [_conv(inputs, outputs), nn.ELU(), _conv(outputs, outputs), nn.ELU()]
            if level < levels:
                layers += [_conv(outputs, width * (level + 1), stride=2), nn.ELU()]
            inputs = width * (level + 1)
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(width * levels * start * start, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.features(x).flatten(1))


class BEGANAutoencoder(nn.Module):
    """BEGAN's discriminator: an autoencoder whose output is the reconstruction of its input.

    Its loss on a batch is the mean absolute reconstruction error ``mean |v - D(v)|``; the
    decoder ends in tanh, as the images (and the generator's output) lie in [-1, 1].

    Args:
        channels: Channels of the images.
        image_size: Side of the square images: 8, 16, 28, 32, 64 or 128.
        width: Channels ``n`` of the convolutions.
        hidden_dim: Size of the embedding ``h`` between encoder and decoder.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 64, hidden_dim: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.image_size = image_size
        self.hidden_dim = hidden_dim
        self.encoder = BEGANEncoder(channels, image_size, width, hidden_dim)
        self.decoder = BEGANDecoder(hidden_dim, channels, image_size, width, output="tanh")

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
