"""Multi-layer perceptrons for low-dimensional data (the 2-D toy distributions)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def _mlp(sizes: list[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _check(name: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{name}: {key} must be >= 1, got {value}")


class MLPGenerator(nn.Module):
    """Maps latent noise ``z`` to a point in data space through a ReLU MLP.

    Args:
        latent_dim: Size of the noise vector ``z``.
        data_dim: Size of a data point (2 for the toy distributions).
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers.
    """

    def __init__(
        self, latent_dim: int = 2, data_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3
    ) -> None:
        super().__init__()
        _check("MLPGenerator", latent_dim=latent_dim, data_dim=data_dim, hidden_dim=hidden_dim,
               num_layers=num_layers)
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        sizes = [latent_dim] + [hidden_dim] * num_layers + [data_dim]
        self.net = _mlp(sizes, nn.ReLU)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, latent_dim) -> (B, data_dim)


class MLPDiscriminator(nn.Module):
    """Scores a data point with one raw output: a logit for a GAN, a value for a critic.

    There is no sigmoid: the losses in ``genlit.losses`` take logits, and a Wasserstein critic
    needs the unbounded value. Use ``leaky_relu`` activations so a critic trained with weight
    clipping or a gradient penalty keeps a gradient everywhere.

    Args:
        data_dim: Size of a data point.
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers.
    """

    def __init__(self, data_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        _check("MLPDiscriminator", data_dim=data_dim, hidden_dim=hidden_dim, num_layers=num_layers)
        self.data_dim = data_dim
        sizes = [data_dim] + [hidden_dim] * num_layers + [1]
        self.net = _mlp(sizes, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.data_dim:
            raise ValueError(
                f"MLPDiscriminator was built for {self.data_dim}-D points but got "
                f"{x.shape[-1]}-D: set the network's data_dim to match the datamodule."
            )
        return self.net(x).squeeze(-1)  # (B, data_dim) -> (B,)


# A critic is the same network read as a real-valued score.
MLPCritic = MLPDiscriminator
