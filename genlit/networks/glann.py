"""GLANN's code mapper and the optional VGG16 perceptual distance (Hoshen, Li and Malik, 2019).

The mapper is the IMLE network of the paper's official code (``_netT`` in yedidh/glann): a ReLU
MLP with batch norm from Gaussian noise to the GLO latent codes. The perceptual distance compares VGG16 features of two image batches; its
ImageNet weights cannot be downloaded at run time, so it loads them from a file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from genlit.errors import GenlitError

__all__ = ["VGG16_WEIGHTS_FILE", "CodeMapper", "VGGPerceptualDistance", "default_vgg16_weights"]

VGG16_WEIGHTS_FILE = "vgg16-397923af.pth"
"""The name of torchvision's ImageNet VGG16 weights (``VGG16_Weights.IMAGENET1K_V1``)."""


class CodeMapper(nn.Module):
    """IMLE's mapper: noise ``(B, noise_dim)`` to latent codes ``(B, latent_dim)``.

    Args:
        noise_dim: Size of the Gaussian noise (32 in the paper's MNIST setting).
        latent_dim: Size of the codes, the generator's ``latent_dim``.
        hidden_dim: Width of each hidden layer.
        num_layers: Number of hidden layers.
        batch_norm: Batch norm after each hidden linear layer, whose bias it replaces, and no
            bias in the output layer, as the official ``_netT``; False: a plain ReLU MLP with
            biases.
    """

    def __init__(self, noise_dim: int = 32, latent_dim: int = 64, hidden_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = False) -> None:
        super().__init__()
        for name, value in {"noise_dim": noise_dim, "latent_dim": latent_dim, "hidden_dim": hidden_dim,
                            "num_layers": num_layers}.items():
            if value < 1:
                raise ValueError(f"CodeMapper: {name} must be >= 1, got {value}")
        self.noise_dim = noise_dim
        self.latent_dim = latent_dim
        sizes = [noise_dim] + [hidden_dim] * num_layers
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers.append(nn.Linear(fan_in, fan_out, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(nn.ReLU())
        layers.append(nn.Linear(hidden_dim, latent_dim, bias=not batch_norm))
        self.net = nn.Sequential(*layers)

    def forward(self, e: Tensor) -> Tensor:
        return self.net(e)


def default_vgg16_weights() -> Path:
    """Where torchvision keeps the downloaded VGG16 weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS_FILE


class VGGPerceptualDistance(nn.Module):
    """Per-sample L1 distance of VGG16 features (after relu1_2, relu2_2 and relu3_3) plus the
    pixels' L1, for images in [-1, 1]; grey images are repeated to three channels.

    Args:
        weights_path: A torchvision VGG16 state dict (``vgg16-397923af.pth``, or any file with
            its ``features.*`` tensors). None: torchvision's download cache.

    Raises:
        GenlitError: When the file does not exist or lacks the layers needed, in one line.
    """

    layers = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        path = Path(weights_path) if weights_path is not None else default_vgg16_weights()
        if not path.is_file():
            raise GenlitError(
                f"the perceptual loss needs VGG16's ImageNet weights, not found at {path}: put "
                f"torchvision's {VGG16_WEIGHTS_FILE} there (or pass vgg_weights: PATH), or use "
                "reconstruction: laplacian, which needs no weights"
            )
        depth = max(self.layers) + 1
        with torch.device("meta"):  # the classifier's 120M weights are never allocated
            features = torchvision.models.vgg16().features[:depth]
        features = features.to_empty(device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = {k.removeprefix("features."): v for k, v in state.items()
                  if k.startswith("features.") and int(k.split(".")[1]) < depth}
        try:
            features.load_state_dict(wanted)
        except RuntimeError as err:
            raise GenlitError(f"{path} is not a VGG16 state dict with layers 0-{depth - 1}: {err}".splitlines()[0]) from None
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def _normalise(self, x: Tensor) -> Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        distance = (x_hat - x).abs().flatten(1).mean(1)
        a, b = self._normalise(x_hat), self._normalise(x)
        for i, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if i in self.layers:
                distance = distance + (a - b).abs().flatten(1).mean(1)
        return distance
