"""A small CNN classifier: genlit's FID feature network for digits, MNIST and Fashion-MNIST.

Plain ``torch.nn``. :mod:`genlit.metrics.features` wraps it as a feature extractor (its
penultimate layer gives the features) and ``scripts/train_features.py`` trains it. The shipped
weights (``genlit/metrics/weights/*.pt``) are state dicts of this layout: renaming a layer
breaks them.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallClassifier"]


class SmallClassifier(nn.Module):
    """A small CNN classifier whose penultimate layer gives FID features.

    Two conv blocks, each halving the resolution with a max pool, and a strided conv feed a
    fully connected feature layer; a linear head classifies from it. About 190k parameters and
    5 M multiply-adds per 28x28 image, so 10,000 images take a few seconds on a CPU.

    Args:
        channels: Input channels.
        input_size: Height and width the network was trained at.
        width: Channels of the first block (the others have twice as many).
        num_features: Size of the feature layer.
        num_classes: Classes of the head.
    """

    def __init__(
        self,
        channels: int = 1,
        input_size: int = 28,
        width: int = 32,
        num_features: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.input_size = input_size
        self.num_features = num_features
        side = (input_size // 4 + 1) // 2  # two max pools, then a stride-2 conv (padding 1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Flatten(),  # (B, 2 * width * side * side)
            nn.Linear(2 * width * side * side, num_features),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(num_features, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, num_features)`` of inputs normalised to [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` of inputs normalised to [-1, 1]."""
        return self.head(self.body(x))
