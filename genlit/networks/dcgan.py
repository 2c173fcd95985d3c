"""DCGAN generator and discriminator (Radford, Metz and Chintala, 2016, arXiv:1511.06434).

Both networks are mirror images: the generator projects z to a small spatial map and doubles
the resolution with strided transposed convolutions; the discriminator halves it with strided
convolutions and ends in one raw score per image. Plain ``torch.nn``; the models in
``genlit.models`` decide which loss (logits, hinge, Wasserstein critic values) the score feeds.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = ["SUPPORTED_IMAGE_SIZES", "DCGANDiscriminator", "DCGANGenerator", "dcgan_init_"]

SUPPORTED_IMAGE_SIZES: tuple[int, ...] = (8, 16, 28, 32, 64)


def _layout(owner: str, image_size: int) -> tuple[int, int]:
    """Returns (start_size, n_resamples): the smallest feature map and how many 2x steps reach it.

    Args:
        owner: Class name, used in the error message.
        image_size: Side length of the square images.

    Raises:
        ValueError: If ``image_size`` is not in ``SUPPORTED_IMAGE_SIZES``.
    """
    if image_size not in SUPPORTED_IMAGE_SIZES:
        sizes = ", ".join(str(s) for s in SUPPORTED_IMAGE_SIZES)
        raise ValueError(
            f"{owner} does not support image_size={image_size}; supported sizes are {sizes}: "
            f"set data.image_size to one of these or resize your data."
        )
    # 28 = 7 * 2**2 is the MNIST-family case; every power of two starts from the paper's 4x4.
    start = 7 if image_size == 28 else 4
    return start, (image_size // start).bit_length() - 1


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner} needs {name} >= 1 but got {name}={value}.")


def dcgan_init_(module: nn.Module) -> None:
    """Initialises one module in place as in the DCGAN paper; use with ``net.apply(dcgan_init_)``.

    Conv and linear weights ~ N(0, 0.02), batch-norm weights ~ N(1, 0.02), all biases 0.
    Spectrally normalised layers are initialised through their unnormalised ``original`` weight.

    Args:
        module: Any module; kinds other than conv, linear and batch norm are left untouched.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = (
            module.parametrizations.weight.original
            if parametrize.is_parametrized(module, "weight")
            else module.weight
        )
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """DCGAN generator: z of shape (B, latent_dim) to images (B, channels, size, size) in [-1, 1].

    z is projected to ``width * 2**(n - 1)`` channels at 4x4 (7x7 for 28x28 images), then each of
    the ``n`` transposed-conv blocks doubles the resolution and halves the channels; the last one
    emits ``channels`` with tanh, so real data should be scaled to [-1, 1].

    Args:
        latent_dim: Size of the latent code z.
        channels: Channels of the generated images (1 for MNIST, 3 for CIFAR-10/CelebA).
        image_size: Side length of the square images; one of 8, 16, 28, 32, 64.
        width: Channels of the last hidden block; earlier blocks have 2x, 4x, ... as many.

    Raises:
        ValueError: If ``image_size`` is unsupported or ``latent_dim``/``channels``/``width`` < 1.
    """

    def __init__(
        self, latent_dim: int = 100, channels: int = 1, image_size: int = 28, width: int = 64
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_positive(owner, latent_dim=latent_dim, channels=channels, width=width)
        start, n_up = _layout(owner, image_size)
        self.latent_dim = latent_dim
        self.channels = channels
        self.image_size = image_size

        hidden = width * 2 ** (n_up - 1)
        # A full-size transposed conv on a 1x1 input is the paper's linear projection, written
        # as a conv so the whole generator stays one Sequential; no bias because BN follows.
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
        # No BN on the output layer: the paper found it destabilises training there.
        layers += [nn.ConvTranspose2d(hidden, channels, 4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init_)

    def forward(self, z: Tensor) -> Tensor:
        """Generates images from latent codes.

        Args:
            z: Latent codes of shape (B, latent_dim).

        Returns:
            Images of shape (B, channels, image_size, image_size) in [-1, 1].
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"{type(self).__name__} expects z of shape (B, {self.latent_dim}) but got "
                f"{tuple(z.shape)}: sample z with the generator's latent_dim."
            )
        z = z[:, :, None, None]  # (B, latent_dim, 1, 1)
        return self.net(z)  # (B, channels, image_size, image_size)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator, or WGAN critic: images to one raw score per image.

    Each strided-conv block halves the resolution and doubles the channels (``width`` in the
    first block, which has no normalisation, as in the paper) down to 4x4 (7x7 for 28x28), and a
    full-size conv reduces that map to a single number. The score is not passed through a
    sigmoid: GAN losses take logits and a WGAN critic's value is unbounded.

    A WGAN-GP critic needs ``batch_norm=False``: the gradient penalty is taken per sample, and
    batch norm makes each score depend on the rest of the batch (Gulrajani et al., 2017).

    Args:
        channels: Channels of the input images.
        image_size: Side length of the square input images; one of 8, 16, 28, 32, 64.
        width: Channels of the first block; later blocks have 2x, 4x, ... as many.
        batch_norm: Batch-normalise every block after the first.
        spectral_norm: Spectrally normalise every conv layer (Miyato et al., 2018), which
            bounds the network's Lipschitz constant without a gradient penalty.

    Raises:
        ValueError: If ``image_size`` is unsupported or ``channels``/``width`` < 1.
    """

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 28,
        width: int = 64,
        batch_norm: bool = True,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_positive(owner, channels=channels, width=width)
        start, n_down = _layout(owner, image_size)
        self.channels = channels
        self.image_size = image_size

        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        hidden = width
        for _ in range(n_down - 1):
            # A conv followed by batch norm needs no bias: BN's shift replaces it.
            layers.append(
                nn.Conv2d(hidden, hidden * 2, 4, stride=2, padding=1, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(hidden * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            hidden *= 2
        layers.append(nn.Conv2d(hidden, 1, kernel_size=start))
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init_)
        if spectral_norm:
            # Wrap after the init so the normal(0, 0.02) draw lands on the raw weight; collect
            # first because registering a parametrisation adds submodules.
            for layer in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
                _spectral_norm(layer)

    def forward(self, x: Tensor) -> Tensor:
        """Scores a batch of images.

        Args:
            x: Images of shape (B, channels, image_size, image_size).

        Returns:
            Raw scores (logits or critic values) of shape (B,).
        """
        expected = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            got = (
                "x".join(str(s) for s in x.shape[1:]) if x.ndim == 4 else f"shape {tuple(x.shape)}"
            )
            raise ValueError(
                f"{type(self).__name__} was built for {'x'.join(map(str, expected))} images but "
                f"got {got}: set the network's channels/image_size to match the datamodule."
            )
        return self.net(x).flatten()  # (B, 1, 1, 1) -> (B,)
