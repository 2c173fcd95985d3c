"""Trains genlit's FID feature classifiers and writes them into the package.

    python scripts/train_features.py mnist --data-root data
    python scripts/train_features.py fashion_mnist --data-root data
    python scripts/train_features.py digits

Each trains a :class:`~genlit.networks.classifier.SmallClassifier` on the real training split,
read through genlit's own datamodule (so it sees exactly the pixels FID will), reports the
accuracy on the test split, and writes ``genlit/metrics/weights/DATASET.pt``: the weights in
float16 (a few hundred kB), the architecture and the test accuracy. Images reach the network
as in FID: rounded to uint8, then :func:`~genlit.metrics.features.prepare_images`.

scikit-learn's digits have no test split: a fixed fifth of them (seed 0) is held out.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from genlit.metrics.features import WEIGHTS_DIR, prepare_images
from genlit.metrics.fid import in_order, to_uint8
from genlit.networks.classifier import SmallClassifier

# dataset -> (datamodule class name, input size, epochs, the test split's name, the largest
# random shift in pixels: centred digits profit from it, centred clothes do not)
RECIPES = {
    "mnist": ("MNIST", 28, 3, "test", 1),
    "fashion_mnist": ("FashionMNIST", 28, 4, "test", 0),
    "digits": ("Digits", 16, 40, "val", 1),
}


def load_split(dataset: str, data_root: str, split: str) -> tuple[Tensor, Tensor]:
    """All images (uint8, as FID sees them) and labels of one split, through genlit's datamodule."""
    import datamodules.images as dm_module

    name, size = RECIPES[dataset][:2]
    cls = getattr(dm_module, name)
    if dataset == "digits":
        datamodule = cls(image_size=size, val_fraction=0.2, seed=0, batch_size=1000)
    else:
        datamodule = cls(root=data_root, download=True, image_size=size, batch_size=1000)
    datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    loader = in_order(getattr(datamodule, f"{split}_dataloader")())
    images, labels = [], []
    for batch in loader:
        x, y = datamodule.on_after_batch_transfer(batch, 0)
        images.append(to_uint8(x))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def shift(images: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """The batch translated by up to ``pixels`` in each direction (one shift per batch), zero-filled."""
    dy, dx = (torch.randint(-pixels, pixels + 1, (2,), generator=generator)).tolist()
    padded = F.pad(images, (pixels, pixels, pixels, pixels))
    h, w = images.shape[-2:]
    return padded[..., pixels + dy : pixels + dy + h, pixels + dx : pixels + dx + w]


@torch.no_grad()
def accuracy(model: SmallClassifier, images: Tensor, labels: Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 1000):
        x = prepare_images(images[i : i + 1000], model.channels, model.input_size)
        correct += int((model(x).argmax(dim=1) == labels[i : i + 1000]).sum())
    return correct / len(images)


def train(dataset: str, data_root: str, epochs: int | None, seed: int, out: Path) -> float:
    """Trains one classifier, writes ``out / f"{dataset}.pt"`` and returns its test accuracy."""
    _, size, default_epochs, test_split, max_shift = RECIPES[dataset]
    epochs = epochs or default_epochs
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_x, train_y = load_split(dataset, data_root, "train")
    test_x, test_y = load_split(dataset, data_root, test_split)
    model = SmallClassifier(channels=train_x.shape[1], input_size=size)
    batch_size = 128
    steps = epochs * math.ceil(len(train_x) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    rng = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=rng)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = shift(train_x[idx], max_shift, rng) if max_shift else train_x[idx]
            loss = F.cross_entropy(model(prepare_images(x, model.channels, size)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        print(
            f"{dataset}: epoch {epoch + 1}/{epochs} train loss {total / len(order):.4f}", flush=True
        )
    acc = accuracy(model, test_x, test_y)
    config = dict(
        channels=model.channels,
        input_size=size,
        width=model.body[0].out_channels,
        num_features=model.num_features,
        num_classes=10,
    )
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dataset}.pt"
    torch.save(
        {
            "state_dict": state,
            "config": config,
            "dataset": dataset,
            "test_accuracy": acc,
            "test_split": test_split,
            "test_images": len(test_x),
            "train_images": len(train_x),
            "epochs": epochs,
            "max_shift": max_shift,
            "seed": seed,
            "trained_by": f"python scripts/train_features.py {dataset}",
        },
        path,
    )
    # The shipped weights are float16: report the accuracy of what was written.
    stored = SmallClassifier(**config)
    stored.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    acc16 = accuracy(stored, test_x, test_y)
    seconds = time.perf_counter() - start
    print(
        f"{dataset}: test accuracy {100 * acc:.2f}% ({100 * acc16:.2f}% with the float16 weights) "
        f"on {len(test_x)} {test_split} images; wrote {path} ({path.stat().st_size / 1024:.0f} kB) "
        f"in {seconds:.0f} s",
        flush=True,
    )
    return acc16


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python scripts/train_features.py",
        description="Train a genlit FID feature classifier on the real training split.",
    )
    parser.add_argument("dataset", choices=sorted(RECIPES))
    parser.add_argument(
        "--data-root", default="data", help="folder holding MNIST/ or FashionMNIST/ (writable)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: 3 (mnist), 4 (fashion_mnist), 40 (digits)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=str(WEIGHTS_DIR), help="output folder (default: the package's weights/)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args.dataset, args.data_root, args.epochs, args.seed, Path(args.out))


if __name__ == "__main__":
    main()
