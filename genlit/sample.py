"""``genlit sample``: draw samples from a checkpoint into a folder of PNGs, an array file or a grid.

    python -m genlit sample --ckpt last.ckpt --n 10000 --out samples/      # 000000.png, ...
    python -m genlit sample --ckpt last.ckpt --n 10000 --out samples.npz   # uint8 N x H x W x C
    python -m genlit sample --ckpt last.ckpt --n 64 --out grid.png --scale 4 --title

The folder is what ``genlit evaluate --images``, torch-fidelity and clean-fid read (one
lossless PNG per image, at the model's own size and channels). The array is the layout of
OpenAI's guided-diffusion evaluator (``np.savez`` of uint8 ``N x H x W x C``, key ``arr_0``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torchvision.utils import make_grid

from genlit.callbacks.grid import save_grid, upscale
from genlit.checkpoints import load_model, read_checkpoint
from genlit.errors import GenlitError

ARRAY_SUFFIXES = (".npz", ".pt")
_PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def save_samples(
    samples: torch.Tensor,
    out: Path,
    nrow: int | None = None,
    scale: int = 1,
    title: Sequence[str] = (),
) -> None:
    """Writes images ``(N, C, H, W)`` in [-1, 1] as a grid, or 2-D points as a scatter plot.

    Args:
        samples: The samples.
        out: The PNG.
        nrow: Images per grid row (default: a square grid).
        scale: Enlarge each image this many times (nearest neighbour); a scatter plot gets
            ``scale`` times the resolution.
        title: Parts of a title line (model, generator step), above the grid or the plot.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if samples.dim() == 4:
        nrow = nrow or max(1, int(len(samples) ** 0.5))
        tiles = upscale(samples.float(), scale)  # (N, C, H * scale, W * scale)
        grid = make_grid(
            tiles, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1)
        )  # (3, rows * (H * scale + 2) + 2, nrow * (W * scale + 2) + 2)
        save_grid(grid, out, title)
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = samples.reshape(len(samples), -1).float().cpu()
    fig = Figure(figsize=(4, 4), dpi=100 * scale)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:orange")
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(", ".join(title), fontsize=9)
    fig.savefig(out, bbox_inches="tight")


def as_array(samples: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [-1, 1] as uint8 ``(N, H, W, C)``; other samples as float32."""
    if samples.dim() != 4:
        return samples.float().contiguous()
    from genlit.metrics.fid import to_uint8

    return to_uint8(samples).permute(0, 2, 3, 1).contiguous()  # (N, H, W, C)


def png_names(n: int) -> list[str]:
    """``000000.png``, ``000001.png``, ...: zero-padded, so sorting by name keeps the order."""
    width = max(6, len(str(n - 1)))
    return [f"{i:0{width}d}.png" for i in range(n)]


def save_folder(chunks: Iterator[torch.Tensor], folder: Path, n: int) -> tuple[int, ...]:
    """Writes each image of ``chunks`` as one PNG in ``folder``; returns the shape ``(C, H, W)``.

    Raises:
        GenlitError: the samples are not images of 1, 3 or 4 channels.
    """
    from PIL import Image

    names = iter(png_names(n))
    shape: tuple[int, ...] = ()
    for chunk in chunks:
        if chunk.dim() != 4 or chunk.shape[1] not in _PNG_MODES:
            raise GenlitError(
                f"samples of shape {tuple(chunk.shape)} are not images of 1, 3 or 4 channels: "
                "write them to a .npz or .pt file instead (or a .png scatter plot)"
            )
        shape = tuple(chunk.shape[1:])
        folder.mkdir(parents=True, exist_ok=True)
        for array in as_array(chunk).numpy():  # (H, W, C) each
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
                folder / next(names)
            )
    return shape


def save_array(samples: torch.Tensor, out: Path) -> torch.Tensor:
    """Writes ``as_array(samples)`` to ``out`` (``np.savez``, key ``arr_0``, or ``torch.save``)."""
    array = as_array(samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".pt":
        torch.save(array, out)
        return array
    import numpy as np

    with open(out, "wb") as file:  # a file object: numpy adds no second .npz suffix
        np.savez(file, array.numpy())
    return array


def output_kind(out: str) -> str:
    """``folder``, ``array`` or ``grid``: what ``--out`` asks for.

    Raises:
        GenlitError: a file name with another suffix.
    """
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return "array"
    if suffix == ".png":
        return "grid"
    raise GenlitError(
        f"--out {out}: end it in / for a folder of PNGs, or in .npz, .pt (one array) or .png "
        "(a grid)"
    )


def check_writable(out: Path, folder: bool, flag: str = "--out") -> None:
    """Fails before sampling when ``out`` cannot be written; creates nothing.

    Args:
        out: The file or folder to write.
        folder: Whether ``out`` is a folder.
        flag: The argument that named ``out``, for the message.

    Raises:
        GenlitError: a file where a folder must be, or a folder without write permission.
    """
    existing = out.absolute() if folder else out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GenlitError(f"{flag} {out}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GenlitError(f"{flag} {out}: no permission to write in {existing}")
    if not folder and out.exists() and not os.access(out, os.W_OK):
        raise GenlitError(f"{flag} {out}: no permission to overwrite it")


def check_device(device: str) -> torch.device:
    """The device ``--device`` names, checked before anything is loaded onto it.

    Raises:
        GenlitError: not a device name, or a GPU this machine does not have.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenlitError(f"--device {device} is not a device: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GenlitError(
                f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() "
                "is False): use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise GenlitError(
                f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to "
                f"cuda:{count - 1}: choose one of them or use --device cpu"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise GenlitError(f"--device {device}: Apple's MPS is not available here: use --device cpu")
    return parsed


def check_no_other_images(folder: Path, n: int) -> None:
    """Fails when ``folder`` holds images this command will not overwrite.

    ``genlit evaluate --images`` reads every image of a folder: a second, smaller run into the
    same folder would otherwise be measured with the first run's leftovers.
    """
    if not folder.is_dir():
        return
    from torchvision.datasets.folder import IMG_EXTENSIONS

    ours = set(png_names(n))
    others = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS and p.relative_to(folder).as_posix() not in ours
    )
    if others:
        raise GenlitError(
            f"--out {folder}/ already holds {len(others)} other images ({others[0]}, ...), which "
            "genlit evaluate --images would read too: choose an empty folder or delete them"
        )


def draw(model: torch.nn.Module, n: int, batch_size: int) -> Iterator[torch.Tensor]:
    """``n`` samples of ``model``, ``batch_size`` at a time, on the CPU."""
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        with torch.no_grad():
            yield model.sample(b).cpu()
        done += b


def sample_main(argv: list[str]) -> None:
    """Parses ``genlit sample`` arguments and writes the samples."""
    parser = argparse.ArgumentParser(
        prog="genlit sample", description="Draw samples from a checkpoint written by genlit fit."
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint path (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument(
        "--out",
        default="samples.png",
        help="DIR/ (ending in / or an existing folder): one PNG per image, 000000.png, ..., "
        "uint8 at the model's size and channels (what genlit evaluate --images, torch-fidelity "
        "and clean-fid read); FILE.npz or FILE.pt: one uint8 array N x H x W x C (npz key "
        "arr_0, as np.savez writes it); FILE.png: a grid. 2-D points: FILE.png is a scatter "
        "plot, FILE.npz or FILE.pt a float32 array N x 2. Default samples.png",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--nrow", type=int, default=None, help="images per grid row (.png)")
    parser.add_argument(
        "--scale", type=int, default=1, help="enlarge each grid image this many times, nearest "
        "neighbour (.png; default 1)"
    )
    parser.add_argument(
        "--title",
        action="store_true",
        help="write the model and its generator step above the grid (.png)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=500, help="samples drawn at a time (default 500)"
    )
    parser.add_argument("--device", default="cpu", help="device to sample on (default cpu)")
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="unpickle the checkpoint in full (weights_only=False): only for a file from "
        "someone you trust, since unpickling can run code it carries",
    )
    args = parser.parse_args(argv)
    for name in ("n", "scale", "batch_size", "nrow"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GenlitError(f"--{name} must be >= 1, got {value}")
    kind = output_kind(args.out)
    out = Path(args.out)
    if kind != "grid" and (args.scale != 1 or args.nrow is not None or args.title):
        raise GenlitError(
            f"--scale, --nrow and --title shape a .png grid; --out {args.out} keeps every sample "
            "at the model's own size (what FID tools need)"
        )
    check_writable(out, folder=kind == "folder")
    device = check_device(args.device)
    if kind == "folder":
        check_no_other_images(out, args.n)
    model = load_model(args.ckpt, trust_checkpoint=args.trust_checkpoint).to(device)
    title: list[str] = []
    if args.title:
        checkpoint = read_checkpoint(args.ckpt, trust_checkpoint=args.trust_checkpoint)
        global_step = int(checkpoint.get("global_step", 0))
        steps = getattr(model, "generator_updates", None)  # counted by adversarial models
        if steps is None:
            steps = global_step // int(getattr(model, "optimizer_steps_per_generator_step", 1))
        title = [type(model).__name__, f"generator step {steps}"]
    torch.manual_seed(args.seed)
    chunks = draw(model, args.n, args.batch_size)
    try:
        if kind == "folder":
            shape = save_folder(chunks, out, args.n)
            what = f"{args.n} PNGs ({'x'.join(map(str, shape))}, uint8)"
        elif kind == "array":
            array = save_array(torch.cat(list(chunks)), out)
            dtype = str(array.dtype).removeprefix("torch.")
            what = f"an array {' x '.join(map(str, array.shape))} ({dtype})"
        else:
            save_samples(torch.cat(list(chunks)), out, args.nrow, args.scale, title)
            what = f"{args.n} samples"
    except OSError as err:
        raise GenlitError(f"cannot write {out}: {err.strerror or err}") from None
    where = f"{out}/" if kind == "folder" else str(out)
    print(f"genlit: wrote {what} of {type(model).__name__} to {where}")
