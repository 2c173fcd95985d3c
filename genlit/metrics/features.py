"""Feature networks for FID and KID: Inception, genlit's small classifiers, or any ``nn.Module``.

Every network here is a :class:`FeatureExtractor`: it takes uint8 images ``(B, C, H, W)`` in
[0, 255] (what :func:`genlit.metrics.fid.to_uint8` makes of a batch in [-1, 1], for real and
generated images alike) and returns float32 features ``(B, d)``. Choose one by name or by
import path with :func:`load_features`:

* ``inception``: torchmetrics' 2048-d pool3 features of the TF-ported Inception v3 weights,
  resized to 299x299 the way TensorFlow 1 did (torchmetrics' ``antialias=False``), so the
  numbers are comparable with published FIDs. Online the weights download once; offline,
  give ``weights_path``.
* ``digits``, ``mnist``, ``fashion_mnist``: genlit's own small CNN classifiers
  (:class:`genlit.networks.classifier.SmallClassifier`), trained by
  ``python scripts/train_features.py DATASET`` on the real training split and shipped
  with the package (``genlit/metrics/weights/``), so FID runs offline and fast on a CPU. Their
  penultimate layer (128-d) gives the features. **FIDs computed with them are comparable only
  with other FIDs computed with the same network, never with published Inception FIDs.**
* ``package.module.Name``: a user's ``nn.Module`` class (built without arguments; its weights
  loaded from ``weights_path`` when given) or a function returning one. It receives the uint8
  images and returns ``(B, d)``.
"""

from __future__ import annotations

import hashlib
import importlib
import urllib.error
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from genlit.errors import GenlitError
from genlit.networks.classifier import SmallClassifier

__all__ = [
    "FEATURE_NETWORKS",
    "INCEPTION_WEIGHTS_FILE",
    "WEIGHTS_DIR",
    "ClassifierFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "InceptionLogits",
    "ModuleFeatures",
    "inception_weights_folder",
    "load_features",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# genlit's classifiers: name -> what they were trained on (the weights file is WEIGHTS_DIR/name.pt).
CLASSIFIERS = {"digits": "scikit-learn digits", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
FEATURE_NETWORKS = ("inception", *CLASSIFIERS)


class FeatureExtractor(nn.Module):
    """Base class: uint8 images ``(B, C, H, W)`` in [0, 255] to float32 features ``(B, d)``.

    Always in eval mode and without gradients. ``name`` identifies the network in logs and in
    cache keys; :meth:`fingerprint` changes whenever the weights do.

    Attributes:
        name: Short name (``mnist``, ``inception``) or import path of the network.
        num_features: Feature dimension d, or ``None`` when only a forward pass can tell.
    """

    name: str = "features"
    num_features: int | None = None

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # batch-norm statistics must never move

    def output_dim(self, image_shape: tuple[int, int, int]) -> int:
        """The feature dimension d for images of shape ``(C, H, W)``."""
        if self.num_features is not None:
            return int(self.num_features)
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        with torch.no_grad():
            probe = torch.zeros(2, *image_shape, dtype=torch.uint8, device=device)
            return int(self(probe).reshape(2, -1).shape[1])

    def fingerprint(self) -> str:
        """A hash of the name and every weight: part of the reference statistics' cache key."""
        digest = hashlib.blake2b(self.name.encode(), digest_size=12)
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    def describe(self) -> str:
        """One line for reports: what the network is and what its numbers compare with."""
        return self.name


# --- genlit's classifiers ----------------------------------------------------------------------


def prepare_images(images: Tensor, channels: int, size: int) -> Tensor:
    """uint8 images to the input of a :class:`~genlit.networks.classifier.SmallClassifier`.

    Floats in [-1, 1] with the network's channels and size: resizing is bilinear with
    antialiasing; RGB becomes grey with the ITU-R 601 luma weights.
    """
    x = images.float() / 127.5 - 1.0  # (B, C, H, W) in [-1, 1]
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        else:
            raise GenlitError(
                f"cannot feed {x.shape[1]}-channel images to a {channels}-channel network"
            )
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x


class ClassifierFeatures(FeatureExtractor):
    """Penultimate-layer features of one of genlit's shipped classifiers (``digits``, ...).

    Images of another size are resized to the size the classifier was trained at, and RGB
    images turned grey, identically for real and generated images.

    Args:
        name: One of ``digits``, ``mnist``, ``fashion_mnist``.
        weights_path: A weights file written by ``scripts/train_features.py`` to use
            instead of the shipped one.
    """

    def __init__(self, name: str, weights_path: str | Path | None = None) -> None:
        super().__init__()
        if name not in CLASSIFIERS:
            raise GenlitError(
                f"no genlit classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}"
            )
        path = Path(weights_path) if weights_path else WEIGHTS_DIR / f"{name}.pt"
        if not path.is_file():
            raise GenlitError(
                f"the weights of genlit's {name} feature network are missing ({path}): reinstall "
                f"genlit or run python scripts/train_features.py {name} (from a checkout)"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.name = name
        self.classifier = SmallClassifier(**saved["config"])
        self.classifier.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
        )
        self.num_features = self.classifier.num_features
        self.test_accuracy = float(saved.get("test_accuracy", float("nan")))
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        x = prepare_images(images, self.classifier.channels, self.classifier.input_size)
        # channels_last makes the CPU's pooling and convolutions about twice as fast.
        return self.fast_body()(x.contiguous(memory_format=torch.channels_last))  # (B, d)

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """Class logits ``(B, 10)`` of uint8 images: the head on :meth:`forward`'s features."""
        return self.classifier.head(self(images)).float()

    def fast_body(self) -> nn.Sequential:
        """The feature layers with each batch norm folded into its conv, in channels_last.

        The same function as ``classifier.features`` (to float rounding) at a third of the
        cost on a CPU; built from the classifier's weights on first use and after ``.to()``.
        """
        fast = self.__dict__.get("_fast")  # not a submodule: the state dict stays the classifier's
        if fast is None:
            layers, body = [], list(self.classifier.body)
            while body:
                layer = body.pop(0)
                if isinstance(layer, nn.Conv2d) and body and isinstance(body[0], nn.BatchNorm2d):
                    layer = fuse_conv_bn_eval(layer, body.pop(0))
                layers.append(layer)
            fast = nn.Sequential(*layers).eval().to(memory_format=torch.channels_last)
            self.__dict__["_fast"] = fast
        return fast

    def _apply(self, fn: Any, recurse: bool = True) -> ClassifierFeatures:
        self.__dict__["_fast"] = None  # rebuilt on the new device / dtype
        return super()._apply(fn, recurse)

    def describe(self) -> str:
        return (
            f"{self.name} (genlit's {CLASSIFIERS[self.name]} classifier, {self.num_features}-d; "
            "comparable only with FIDs from the same network, not with Inception FIDs)"
        )


# --- Inception ---------------------------------------------------------------------------------


def inception_weights_folder() -> Path:
    """Where torch-fidelity downloads the Inception weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class InceptionFeatures(FeatureExtractor):
    """torchmetrics' 2048-d Inception v3 features (TF-ported weights), as in published FIDs.

    Images are resized to 299x299 with TensorFlow 1's bilinear resize (torchmetrics'
    ``antialias=False``); grey images are repeated over three channels.

    Args:
        weights_path: A local copy of ``weights-inception-2015-12-05-6726825d.pth``. Without
            it the file is taken from ``$TORCH_HOME/hub/checkpoints`` or downloaded there.

    Raises:
        GenlitError: the weights are neither at ``weights_path``, nor in the hub folder, nor
            downloadable; the message names the file, the folder and the argument to set.
    """

    name = "inception"
    num_features = 2048
    layer = "2048"  # torch-fidelity's name of the output

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        folder = inception_weights_folder()
        if weights_path is not None:
            path: Path | None = Path(weights_path).expanduser()
            if not path.is_file():
                raise GenlitError(
                    f"the Inception weights file {path} does not exist: set weights_path to a "
                    f"copy of {INCEPTION_WEIGHTS_FILE}"
                )
        else:
            path = folder / INCEPTION_WEIGHTS_FILE
            path = path if path.is_file() else None  # None: torch-fidelity downloads it
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[self.layer],
                feature_extractor_weights_path=None if path is None else str(path),
                antialias=False,
            )
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as err:
            if path is not None:
                raise GenlitError(f"cannot load the Inception weights from {path}: {err}") from None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GenlitError(
                f"the Inception weights {INCEPTION_WEIGHTS_FILE} are not in {folder} and could "
                f"not be downloaded ({reason}): copy the file into that folder, or set "
                f"weights_path to a local copy (or choose features=mnist, fashion_mnist or digits)"
            ) from None
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        return self.net(images).float()  # (B, 2048)

    def describe(self) -> str:
        return "inception (2048-d pool3, TF weights and resize: comparable with published FIDs)"


class InceptionLogits(InceptionFeatures):
    """The 1008 class logits of the same Inception v3 (``logits_unbiased``), for the Inception
    Score. Same weights, resize and errors as :class:`InceptionFeatures`."""

    name = "inception_logits"
    num_features = 1008
    layer = "logits_unbiased"

    def __init__(self, weights_path: str | Path | None = None) -> None:
        """Raises GenlitError, too, for a weights file without logits: one whose ``fc`` is NaN,
        as ``benchmarks/inception_from_fid_helper.py`` writes (features only)."""
        super().__init__(weights_path)
        if bool(torch.isnan(self.net.fc.weight).all()):
            path = weights_path or inception_weights_folder() / INCEPTION_WEIGHTS_FILE
            raise GenlitError(
                f"the Inception weights file {path} carries no Inception logits (it was converted "
                f"from a features-only network): the Inception Score needs torch-fidelity's "
                f"original weights file {INCEPTION_WEIGHTS_FILE}"
            )

    def describe(self) -> str:
        return "inception logits (TF weights: comparable with published Inception Scores)"


# --- user networks -----------------------------------------------------------------------------


class ModuleFeatures(FeatureExtractor):
    """Any ``nn.Module`` mapping uint8 images ``(B, C, H, W)`` to features ``(B, ...)``.

    Args:
        module: The network; its output is flattened to ``(B, d)`` and cast to float32.
        name: Its name in logs and cache keys (the import path when loaded by name).
    """

    def __init__(self, module: nn.Module, name: str | None = None) -> None:
        super().__init__()
        self.module = module
        self.name = name or f"{type(module).__module__}.{type(module).__qualname__}"
        dim = getattr(module, "num_features", None)
        self.num_features = int(dim) if isinstance(dim, int) else None
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.module(images).reshape(len(images), -1).float()  # (B, d)


def _import(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise GenlitError(
            f"unknown feature network {path!r} ({type(err).__name__}: {err}); choose one of "
            f"{', '.join(FEATURE_NETWORKS)}, or give an import path (package.module.Class)"
        ) from None


def load_features(
    spec: str | nn.Module, weights_path: str | Path | None = None
) -> FeatureExtractor:
    """The feature network named by ``spec``, in eval mode, on the CPU.

    Args:
        spec: ``inception``, ``digits``, ``mnist``, ``fashion_mnist``, an import path
            (``package.module.Class`` or a function returning an ``nn.Module``), or a module.
        weights_path: Inception: a local copy of the weights. genlit classifiers: a file
            written by ``scripts/train_features.py``. A user class: a state dict to load into it.

    Raises:
        GenlitError: unknown name, or weights that cannot be found or loaded.
    """
    # Building a network initialises weights from the global RNG before they are loaded: on a
    # forked stream, so that loading one during fit (the FID callback's setup) changes nothing.
    with torch.random.fork_rng(devices=[]):
        return _load_features(spec, weights_path)


def _load_features(spec: str | nn.Module, weights_path: str | Path | None) -> FeatureExtractor:
    if isinstance(spec, FeatureExtractor):
        return spec.eval()
    if isinstance(spec, nn.Module):
        return ModuleFeatures(spec)
    if spec == "inception":
        return InceptionFeatures(weights_path)
    if spec in CLASSIFIERS:
        return ClassifierFeatures(spec, weights_path)
    if "." not in spec:
        raise GenlitError(
            f"unknown feature network {spec!r}; choose one of {', '.join(FEATURE_NETWORKS)}, "
            "or give an import path (package.module.Class)"
        )
    factory = _import(spec)
    module = factory() if callable(factory) else factory
    if not isinstance(module, nn.Module):
        raise GenlitError(
            f"feature network {spec} gave a {type(module).__name__}, not an nn.Module"
        )
    if weights_path is not None:
        module.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    if isinstance(module, FeatureExtractor):
        return module.eval()
    return ModuleFeatures(module, name=spec)
