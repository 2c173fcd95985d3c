"""``genlit evaluate``: FID and KID of a checkpoint's samples, or of a folder of images; with
``--precision_recall`` also precision, recall, density and coverage in the same features, and
with ``--classes mnist`` (``--stacked`` for Stacked MNIST) the class coverage; with
``--copying`` the data-copying figures against the training split (C_T, the nearest-training
ratio, MiFID's memorization; the member test for models that hold per-image state), and
``--neighbours out.png`` a picture of samples above their nearest training images.

    python -m genlit evaluate --ckpt runs/mnist/nsgan/version_0/checkpoints/last.ckpt \\
        --config configs/mnist/nsgan.yaml --num_samples 10000 --features mnist
    python -m genlit evaluate --images my_samples/ --config configs/mnist/nsgan.yaml

The config's ``data`` section gives the real images (override its keys as in ``fit``:
``--data.init_args.root=/data``); the settings of its ``FID`` callback, when it has one, are
the defaults of ``--features``, ``--num_samples``, ``--split`` and ``--weights_path``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlit.errors import GenlitError
from genlit.metrics.copying import describe
from genlit.metrics.features import load_features
from genlit.metrics.fid import (
    FeatureDistances,
    InceptionScoreSide,
    ReferenceStats,
    Tee,
    generate_into,
    reference_statistics,
)


@dataclass
class Evaluation:
    """One FID/KID measurement and the settings it was made with."""

    fid: float
    kid_mean: float | None
    kid_std: float | None
    num_samples: int
    source: str
    features: str
    reference: ReferenceStats
    seconds: float
    manifold: dict[str, float] | None = None
    classes: Any | None = None
    """The :class:`~genlit.metrics.classes.ClassStats`, with ``--classes``."""
    inception_score: dict[str, float] | None = None
    copying: dict[str, float] | None = None
    """The data-copying figures (:mod:`genlit.metrics.copying`), with ``--copying``."""

    def as_dict(self) -> dict[str, Any]:
        """The numbers and their settings as plain data (``genlit evaluate --json``)."""
        classes = None
        if self.classes is not None:
            classes = {
                "classes": self.classes.classes,
                "num_classes": self.classes.num_classes,
                "kl": self.classes.kl,
                "confident": self.classes.confident,
            }
        return {
            "fid": self.fid,
            "kid_mean": self.kid_mean,
            "kid_std": self.kid_std,
            "num_samples": self.num_samples,
            "source": self.source,
            "features": self.features,
            "reference": self.reference.describe(),
            "seconds": self.seconds,
            "manifold": self.manifold,
            "classes": classes,
            "inception_score": self.inception_score,
            "copying": self.copying,
        }

    def report(self) -> str:
        kid = f", KID {self.kid_mean:.4g} ± {self.kid_std:.2g}" if self.kid_mean is not None else ""
        cached = f" ({self.reference.path})" if self.reference.path else ""
        return "\n".join(
            [
                f"genlit: FID {self.fid:.4g}{kid}",
                f"  samples     {self.num_samples} from {self.source}",
                f"  reference   {self.reference.describe()}{cached}",
                f"  features    {self.features}",
                *(
                    [
                        "  manifold    precision {precision:.4f}, recall {recall:.4f}, density "
                        "{density:.4f}, coverage {coverage:.4f}".format(**self.manifold)
                    ]
                    if self.manifold
                    else []
                ),
                *(
                    [
                        f"  classes     {self.classes.classes}/{self.classes.num_classes} covered, "
                        f"KL {self.classes.kl:.4g}, {self.classes.confident:.1%} confident"
                    ]
                    if self.classes is not None
                    else []
                ),
                *(
                    [
                        "  IS          {is_mean:.4g} ± {is_std:.2g}".format(**self.inception_score)
                    ]
                    if self.inception_score
                    else []
                ),
                *([f"  copying     {describe(self.copying)}"] if self.copying else []),
                f"  time        {self.seconds:.1f} s",
            ]
        )


def folder_batches(
    folder: str | Path, shape: tuple[int, int, int], limit: int | None = None, batch_size: int = 500
) -> Iterator[Tensor]:
    """The images of ``folder`` (recursively, sorted by path) as uint8 batches ``(B, C, H, W)``.

    Raises:
        GenlitError: no images, or images of another size than ``shape``.
    """
    import numpy as np
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise GenlitError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {root}")
    files = files[:limit] if limit else files
    channels, height, width = shape
    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start : start + batch_size]:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
            if array.shape[:2] != (height, width):
                raise GenlitError(
                    f"{path} is {array.shape[1]}x{array.shape[0]} but the real images are "
                    f"{width}x{height}: save the samples at the datamodule's image_size"
                )
            arrays.append(array.reshape(height, width, channels))
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def evaluate(
    datamodule: Any,
    model: Any | None = None,
    images: str | Path | None = None,
    features: str = "inception",
    num_samples: int | None = 10000,
    split: str = "test",
    kid: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    weights_path: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    seed: int = 0,
    source: str | None = None,
    precision_recall: bool = False,
    nearest_k: int = 5,
    classes: str | None = None,
    stacked: bool = False,
    inception_score: bool = False,
    copying: bool = False,
    copying_cells: int | None = None,
    member_test: bool = False,
    neighbours: str | Path | None = None,
) -> Evaluation:
    """FID (and KID) of ``model.sample`` or of a folder of images against ``datamodule``'s split.

    Args:
        datamodule: Gives the real images (read only when the cache has no statistics yet).
        model: A ``GenerativeModel``; ``num_samples`` samples are drawn (capped at the number
            of real images), from seed ``seed``.
        images: Instead of a model: a folder of images of the datamodule's shape (up to
            ``num_samples`` of them when given).
        features, num_samples, split, kid, kid_subsets, kid_subset_size, weights_path,
            cache_dir, batch_size, seed: As for :class:`genlit.callbacks.FID`.
        device: Where the samples and features are computed.
        source: How the report names the samples.
        precision_recall: Also precision, recall, density and coverage, with ``nearest_k``.
        nearest_k: Their k.
        classes: A genlit classifier (``digits``, ``mnist``, ``fashion_mnist``): also the
            class coverage of the same images, against the class histogram of ``split``
            (uniform for ``stacked``).
        stacked: Stacked MNIST: every channel is a digit (1,000 classes).
        inception_score: Also the Inception Score (needs the Inception weights, as
            ``features=inception`` does).
        copying: Also the data-copying figures of the same images against the training
            split, with the held-out images of ``split`` (of ``test`` when ``split`` is
            ``train``); the member test too when the model holds per-image state.
        copying_cells: C_T's k-means cells (``None``: about 200 samples per cell, at most 50).
        member_test: Require the member test: refused in one line for a model without
            per-image state (or a folder of images).
        neighbours: Also save 16 samples above their nearest training images to this PNG
            (implies ``copying``).
    """
    if (model is None) == (images is None):
        raise GenlitError("give either a checkpoint (--ckpt) or a folder of images (--images)")
    start = time.perf_counter()
    device = torch.device(device)
    network = load_features(features, weights_path).to(device)
    shape = None
    if getattr(datamodule, "channels", None) and getattr(datamodule, "image_size", None):
        shape = (datamodule.channels, datamodule.image_size, datamodule.image_size)
    copying = copying or member_test or neighbours is not None
    if member_test and not callable(getattr(model, "copying_members", None)):
        what = type(model).__name__ if model is not None else "a folder of images"
        raise GenlitError(
            f"--member_test: {what} holds no state per training image; the member test applies "
            "to AE-OT, AE-OT-GAN and GLANN checkpoints"
        )
    distances = FeatureDistances(
        network, shape, kid, kid_subsets, kid_subset_size, seed,
        precision_recall=precision_recall, nearest_k=nearest_k,
        copying=copying, copying_cells=copying_cells,
    ).to(device)  # fmt: skip
    stats = reference_statistics(datamodule, split, distances, cache_dir, device)
    distances.set_reference(stats)
    if copying:
        from genlit.metrics.copying import copying_sides

        sides = copying_sides(
            datamodule, split, stats,
            lambda part: reference_statistics(datamodule, part, distances, cache_dir, device),
            model, seed,
        )  # fmt: skip
        if member_test and sides[2] is None:
            raise GenlitError(
                f"--member_test: this {type(model).__name__} recorded no training positions for its "
                "state: train (or fit the OT map) with data.init_args.indices: true"
            )
        distances.set_copying(*sides)
    counter = scorer = None
    if classes is not None:
        from genlit.metrics.classes import ClassCounter, class_histogram
        from genlit.metrics.fid import real_labels

        counter = ClassCounter(classes, stacked=stacked).to(device)
        if not stacked:
            counter.reference = class_histogram(real_labels(datamodule, split), counter.num_classes)
    if inception_score:
        scorer = InceptionScoreSide(weights_path if features == "inception" else None).to(device)
    sink = Tee(distances, counter, scorer)
    with torch.no_grad():
        if model is not None:
            model = model.to(device).eval()
            n = stats.num_samples if num_samples is None else min(num_samples, stats.num_samples)
            torch.manual_seed(seed)
            generate_into(sink, model.sample, n, batch_size)
            source = source or type(model).__name__
        else:
            n = 0
            for batch in folder_batches(images, stats.image_shape, num_samples, batch_size):
                sink.update(batch.to(device))
                n += len(batch)
            source = source or str(images)
    if n < 2:
        what = f"{images} holds {n} image" if model is None else f"{n} sample"
        raise GenlitError(
            f"{what}: FID compares two covariance matrices, which need at least 2 images each"
        )
    values = distances.compute()
    manifold = {k: values[k] for k in ("precision", "recall", "density", "coverage") if k in values}
    copied = None
    if copying:
        from genlit.metrics.copying import FIGURES

        names = (*FIGURES, "mifid", "member_share")
        copied = {k: values[k] for k in names if k in values}
        if neighbours is not None:
            _save_neighbours(distances, datamodule, model, images, stats, Path(neighbours), seed, device)
    return Evaluation(
        fid=values["fid"],
        kid_mean=values.get("kid_mean"),
        kid_std=values.get("kid_std"),
        num_samples=n,
        source=source,
        features=network.describe(),
        reference=stats,
        seconds=time.perf_counter() - start,
        manifold=manifold or None,
        classes=None if counter is None else counter.compute(),
        inception_score=None if scorer is None else scorer.compute(),
        copying=copied,
    )


def _save_neighbours(
    distances: FeatureDistances, datamodule: Any, model: Any, images: Any,
    stats: ReferenceStats, path: Path, seed: int, device: torch.device, count: int = 16,
) -> None:  # fmt: skip
    """16 samples (the first of the folder, or drawn from ``seed``) above their nearest training images."""
    from genlit.callbacks.grid import save_neighbours
    from genlit.metrics.copying import training_images
    from genlit.metrics.fid import to_uint8

    if model is not None:
        torch.manual_seed(seed)
        with torch.no_grad():
            shown = to_uint8(model.sample(count)).to(device)
        name = type(model).__name__
    else:
        shown = next(folder_batches(images, stats.image_shape, count, count)).to(device)
        name = str(images)
    rows, ratios = distances.copying.nearest_training(distances.features(shown))
    title = [name, f"samples above their nearest training images in {distances.network.name} features"]
    save_neighbours(shown.cpu(), training_images(datamodule, rows), ratios.cpu(), path, title)


# --- the command -------------------------------------------------------------------------------


def _config_fid_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The init_args of the config's FID callback, if it has one."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for entry in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).rsplit(".", 1)[-1] == "FID":
            return dict(entry.get("init_args") or {})
    return {}


def build_datamodule(data: dict[str, Any], overrides: list[str]) -> Any:
    """The datamodule of a config's ``data`` section, with ``--data.*`` overrides applied."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    import datamodules.images  # noqa: F401 - short class names
    import datamodules.toy  # noqa: F401

    parser = ArgumentParser(exit_on_error=False, prog="genlit evaluate")
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        parsed = parser.parse_args(["--data", json.dumps(data), *overrides])
        built = (
            parser.instantiate(parsed)
            if hasattr(parser, "instantiate")
            else parser.instantiate_classes(parsed)
        )
    except Exception as err:  # noqa: BLE001 - jsonargparse's errors span lines
        message = str(err).strip().splitlines()
        raise GenlitError(f"data: {message[0] if message else type(err).__name__}") from None
    return built.data


def evaluate_main(argv: list[str]) -> None:
    """Parses ``genlit evaluate`` arguments, measures and prints FID and KID with their settings."""
    parser = argparse.ArgumentParser(
        prog="genlit evaluate",
        description="FID and KID of a checkpoint's samples (or of a folder of images) against "
        "the real images of a config's datamodule. Extra --data.* arguments override the config.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint written by genlit fit")
    source.add_argument("--images", help="folder of images of the datamodule's size")
    parser.add_argument(
        "--config", required=True, help="experiment YAML; its data section gives the real images"
    )
    parser.add_argument(
        "--features",
        default=None,
        help="inception, digits, mnist, fashion_mnist or an import path (default: the config's FID callback, else inception)",
    )
    parser.add_argument(
        "--num_samples",
        type=int,
        default=None,
        help="generated images (default: the config's FID callback, else 10000)",
    )
    parser.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default=None,
        help="reference split (default test)",
    )
    parser.add_argument(
        "--weights_path",
        default=None,
        help="local weights of the feature network (Inception offline)",
    )
    parser.add_argument(
        "--cache_dir",
        default=None,
        help="folder of cached reference statistics (default ~/.cache/genlit/fid)",
    )
    parser.add_argument("--no_kid", action="store_true", help="skip KID")
    parser.add_argument(
        "--precision_recall",
        action="store_true",
        help="also precision, recall, density and coverage in the same features",
    )
    parser.add_argument(
        "--nearest_k", type=int, default=None, help="their k-nearest-neighbour k (default 5)"
    )
    parser.add_argument(
        "--classes",
        choices=["digits", "mnist", "fashion_mnist"],
        default=None,
        help="also the class coverage, labelled by this genlit classifier",
    )
    parser.add_argument(
        "--inception_score",
        action="store_true",
        help="also the Inception Score (needs the Inception weights: --weights_path offline)",
    )
    parser.add_argument(
        "--stacked", action="store_true", help="Stacked MNIST: a digit per channel (with --classes mnist)"
    )
    parser.add_argument(
        "--copying",
        action="store_true",
        help="also the data-copying figures against the training split: C_T, nearest-training "
        "ratio, MiFID's memorization (and the member test where the model holds per-image state)",
    )
    parser.add_argument(
        "--copying_cells", type=int, default=None, help="C_T's k-means cells (default: about 200 samples per cell, at most 50)"
    )
    parser.add_argument(
        "--member_test", action="store_true", help="require the member test (AE-OT, AE-OT-GAN, GLANN checkpoints)"
    )
    parser.add_argument(
        "--neighbours", default=None, help="also save 16 samples above their nearest training images to this PNG"
    )
    parser.add_argument(
        "--batch_size", type=int, default=500, help="images per batch (default 500)"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, ... (default: cuda when available)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    parser.add_argument(
        "--json", default=None, help="also write the numbers and their settings to this JSON file"
    )
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="unpickle the checkpoint in full (weights_only=False): only for a file from "
        "someone you trust, since unpickling can run code it carries",
    )
    args, overrides = parser.parse_known_args(argv)
    unknown = [a for a in overrides if a.startswith("--") and not a.startswith("--data.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.batch_size < 1:
        raise GenlitError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.stacked and args.classes != "mnist":
        raise GenlitError("--stacked labels each channel with the MNIST classifier: add --classes mnist")
    if args.copying_cells is not None and args.copying_cells < 1:
        raise GenlitError(f"--copying_cells must be >= 1, got {args.copying_cells}")
    if args.neighbours and not args.neighbours.lower().endswith(".png"):
        raise GenlitError(f"--neighbours writes a PNG: give a path ending in .png, got {args.neighbours}")
    if args.nearest_k is not None and args.nearest_k < 1:
        raise GenlitError(f"--nearest_k must be >= 1, got {args.nearest_k}")
    if args.num_samples is not None and args.num_samples < 2:
        raise GenlitError(
            f"--num_samples must be >= 2, got {args.num_samples}: FID compares two covariance "
            "matrices, which need at least 2 images each"
        )

    from genlit.config_errors import load_config_file
    from genlit.metrics.fid import default_cache_dir
    from genlit.sample import check_device, check_writable

    config_path = Path(args.config)
    if not config_path.is_file():
        raise GenlitError(f"config {config_path} does not exist")
    config = load_config_file(config_path)
    if "data" not in config:
        raise GenlitError(f"config {config_path} has no data section to take the real images from")
    settings = _config_fid_settings(config)
    datamodule = build_datamodule(config["data"], overrides)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    cache_dir = args.cache_dir or settings.get("cache_dir")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not cache.is_dir():  # an existing folder may be read-only and hold the statistics
        check_writable(cache, folder=True, flag="--cache_dir")
    if args.neighbours:
        check_writable(Path(args.neighbours), folder=False, flag="--neighbours")
    model = None
    if args.ckpt:
        from genlit.checkpoints import load_model

        model = load_model(args.ckpt, trust_checkpoint=args.trust_checkpoint)
    num_samples = args.num_samples or settings.get("num_samples", 10000)
    if args.images and args.num_samples is None:
        num_samples = None  # a folder: all of its images
    result = evaluate(
        datamodule,
        model=model,
        images=args.images,
        features=args.features or settings.get("features", "inception"),
        num_samples=num_samples,
        split=args.split or settings.get("split", "test"),
        kid=not args.no_kid and settings.get("kid", True),
        kid_subsets=settings.get("kid_subsets", 100),
        kid_subset_size=settings.get("kid_subset_size", 1000),
        weights_path=args.weights_path or settings.get("weights_path"),
        cache_dir=cache_dir,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        source=f"{args.ckpt} ({type(model).__name__})" if model is not None else None,
        precision_recall=args.precision_recall or settings.get("precision_recall", False),
        nearest_k=args.nearest_k or settings.get("nearest_k", 5),
        classes=args.classes,
        stacked=args.stacked,
        inception_score=args.inception_score,
        copying=args.copying,
        copying_cells=args.copying_cells or settings.get("copying_cells"),
        member_test=args.member_test,
        neighbours=args.neighbours,
    )
    print(result.report(), flush=True)
    if args.neighbours:
        print(f"  neighbours  {args.neighbours}", flush=True)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        partial.replace(out)
