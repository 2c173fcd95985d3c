"""Encoders, decoders and a latent-space discriminator for the autoencoder family.

The convolutional pair mirrors the DCGAN networks (same widths, same 2x resampling steps): the
encoder is the DCGAN discriminator body with a latent head, the decoder the DCGAN generator
without its final tanh. The MLP pair is the fully connected setup of Kingma & Welling and of
the ELBO-surgery experiments. Decoders return raw values (logits or pre-activations): the model
applies the link of its likelihood (``sigmoid`` for a Bernoulli decoder, ``tanh`` for squared
error or a Gaussian), so one decoder serves every loss.

An encoder built with ``gaussian=True`` returns ``(mean, log_variance)``, the diagonal Gaussian
``q(z|x)`` of a VAE; otherwise it returns the code ``z`` itself.
"""

from __future__ import annotations

from torch import Tensor, nn

from genlit.networks.dcgan import _check_positive, _layout, dcgan_init_
from genlit.networks.mlp import _mlp

__all__ = ["ConvDecoder", "ConvEncoder", "IdentityEmbedding", "LatentDiscriminator", "MLPDecoder", "MLPEncoder"]


def _check_images(owner: str, x: Tensor, channels: int, image_size: int) -> None:
    expected = (channels, image_size, image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{owner} was built for {'x'.join(map(str, expected))} images but got shape "
            f"{tuple(x.shape)}: set the network's channels/image_size to match the datamodule."
        )


def _check_codes(owner: str, z: Tensor, latent_dim: int) -> None:
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(
            f"{owner} expects z of shape (B, {latent_dim}) but got {tuple(z.shape)}: "
            "build encoder, decoder and discriminator with the same latent_dim."
        )


class _Encoder(nn.Module):
    """The shared head: a code, or the mean and log-variance of a diagonal Gaussian."""

    latent_dim: int
    gaussian: bool
    channels: int
    image_size: int

    def body(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Encodes a batch of images.

        Args:
            x: Images of shape (B, channels, image_size, image_size).

        Returns:
            ``z`` of shape (B, latent_dim), or ``(mean, log_variance)``, each (B, latent_dim),
            when the encoder is Gaussian.
        """
        _check_images(type(self).__name__, x, self.channels, self.image_size)
        out = self.body(x)  # (B, latent_dim) or (B, 2 * latent_dim)
        if not self.gaussian:
            return out
        mean, log_var = out.chunk(2, dim=1)  # (B, latent_dim) each
        return mean, log_var


class ConvEncoder(_Encoder):
    """DCGAN-style encoder: strided convolutions down to 4x4 (7x7 for 28x28), then a latent head.

    Each block halves the resolution and doubles the channels, as in the DCGAN discriminator;
    the last convolution covers the whole small map and emits the code (or mean and
    log-variance), a linear layer written as a conv.

    Args:
        channels: Channels of the input images.
        image_size: Side length of the square input images; one of 8, 16, 28, 32, 64.
        latent_dim: Size of the code z.
        width: Channels of the first block; later blocks have 2x, 4x, ... as many.
        gaussian: Return ``(mean, log_variance)`` of q(z|x) instead of z.
        batch_norm: Batch-normalise every block after the first.

    Raises:
        ValueError: If ``image_size`` is unsupported or ``channels``/``latent_dim``/``width`` < 1.
    """

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 8,
        width: int = 64,
        gaussian: bool = False,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_positive(owner, channels=channels, latent_dim=latent_dim, width=width)
        start, n_down = _layout(owner, image_size)
        self.channels, self.image_size = channels, image_size
        self.latent_dim, self.gaussian = latent_dim, gaussian
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        hidden = width
        for _ in range(n_down - 1):
            layers.append(
                nn.Conv2d(hidden, hidden * 2, 4, stride=2, padding=1, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(hidden * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            hidden *= 2
        out = 2 * latent_dim if gaussian else latent_dim
        layers += [nn.Conv2d(hidden, out, kernel_size=start), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init_)

    def body(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, C, H, W) -> (B, out)


class ConvDecoder(nn.Module):
    """DCGAN-style decoder: the DCGAN generator without its output activation.

    z is projected to ``width * 2**(n - 1)`` channels at 4x4 (7x7 for 28x28); each transposed
    convolution doubles the resolution and halves the channels. The output is raw: logits for a
    Bernoulli decoder, pre-tanh values otherwise (the model applies the link).

    Args:
        latent_dim: Size of the code z.
        channels: Channels of the output images.
        image_size: Side length of the square images; one of 8, 16, 28, 32, 64.
        width: Channels of the last hidden block; earlier blocks have 2x, 4x, ... as many.

    Raises:
        ValueError: If ``image_size`` is unsupported or ``latent_dim``/``channels``/``width`` < 1.
    """

    def __init__(
        self, latent_dim: int = 8, channels: int = 1, image_size: int = 28, width: int = 64
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_positive(owner, latent_dim=latent_dim, channels=channels, width=width)
        start, n_up = _layout(owner, image_size)
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        hidden = width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, hidden, kernel_size=start, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(hidden // 2),
                nn.ReLU(inplace=True),
            ]
            hidden //= 2
        layers.append(nn.ConvTranspose2d(hidden, channels, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init_)

    def forward(self, z: Tensor) -> Tensor:
        """Decodes codes of shape (B, latent_dim) into raw outputs (B, channels, size, size)."""
        _check_codes(type(self).__name__, z, self.latent_dim)
        return self.net(z[:, :, None, None])  # (B, latent_dim, 1, 1) -> (B, C, H, W)


class MLPEncoder(_Encoder):
    """Fully connected encoder: flattened image, ``num_layers`` ReLU layers, a latent head.

    Args:
        channels: Channels of the input images.
        image_size: Side length of the square input images.
        latent_dim: Size of the code z.
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers.
        gaussian: Return ``(mean, log_variance)`` of q(z|x) instead of z.

    Raises:
        ValueError: If any size is < 1.
    """

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 8,
        hidden_dim: int = 512,
        num_layers: int = 2,
        gaussian: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(
            type(self).__name__,
            channels=channels,
            image_size=image_size,
            latent_dim=latent_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
        )
        self.channels, self.image_size = channels, image_size
        self.latent_dim, self.gaussian = latent_dim, gaussian
        out = 2 * latent_dim if gaussian else latent_dim
        self.net = _mlp([channels * image_size**2] + [hidden_dim] * num_layers + [out], nn.ReLU)

    def body(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # (B, C * H * W) -> (B, out)


class MLPDecoder(nn.Module):
    """Fully connected decoder: z, ``num_layers`` ReLU layers, raw outputs reshaped to images.

    Args:
        latent_dim: Size of the code z.
        channels: Channels of the output images.
        image_size: Side length of the square output images.
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers.

    Raises:
        ValueError: If any size is < 1.
    """

    def __init__(
        self,
        latent_dim: int = 8,
        channels: int = 1,
        image_size: int = 28,
        hidden_dim: int = 512,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        _check_positive(
            type(self).__name__,
            latent_dim=latent_dim,
            channels=channels,
            image_size=image_size,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
        )
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.net = _mlp(
            [latent_dim] + [hidden_dim] * num_layers + [channels * image_size**2], nn.ReLU
        )

    def forward(self, z: Tensor) -> Tensor:
        """Decodes codes of shape (B, latent_dim) into raw outputs (B, channels, size, size)."""
        _check_codes(type(self).__name__, z, self.latent_dim)
        out = self.net(z)  # (B, C * H * W)
        return out.view(-1, self.channels, self.image_size, self.image_size)


class LatentDiscriminator(nn.Module):
    """WAE-GAN's adversary in latent space: one logit per code, "drawn from the prior" vs "encoded".

    The WAE paper's D_Z: ``num_layers`` fully connected ReLU layers of ``hidden_dim`` units
    (4 x 512 for MNIST, 4 x 1024 for CelebA) and a linear output. It exposes ``latent_dim``, not
    ``data_dim``: it never sees data.

    Args:
        latent_dim: Size of the codes it scores.
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers.

    Raises:
        ValueError: If any size is < 1.
    """

    def __init__(self, latent_dim: int = 8, hidden_dim: int = 512, num_layers: int = 4) -> None:
        super().__init__()
        _check_positive(
            type(self).__name__, latent_dim=latent_dim, hidden_dim=hidden_dim, num_layers=num_layers
        )
        self.latent_dim = latent_dim
        self.net = _mlp([latent_dim] + [hidden_dim] * num_layers + [1], nn.ReLU)

    def forward(self, z: Tensor) -> Tensor:
        """Scores codes of shape (B, latent_dim); returns logits of shape (B,)."""
        _check_codes(type(self).__name__, z, self.latent_dim)
        return self.net(z).squeeze(-1)  # (B, 1) -> (B,)


class IdentityEmbedding(nn.Module):
    """The identity map as encoder and decoder: the data are their own codes.

    For AE-OT on low-dimensional data (the toy sets), where the transport map is fitted to the
    samples themselves. It has no weights, so there is nothing to train; the model's link to
    data space is the identity too (``identity = True``).

    Args:
        dim: Dimension of the data, and so of the codes.
    """

    identity = True
    gaussian = False

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        _check_positive(type(self).__name__, dim=dim)
        self.latent_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Returns ``x`` (shape (B, dim)) unchanged."""
        _check_codes(type(self).__name__, x, self.latent_dim)
        return x
