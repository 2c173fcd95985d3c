"""`genlit sample` outputs (PNG folders, npz/pt arrays, grids) and what grids look like.

The folder goes back through `genlit evaluate --images`; grids are upscaled, titled and labelled.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.images import Digits
from genlit.callbacks import ReconstructionGrid, SampleGrid
from genlit.callbacks.grid import RunTitle
from genlit.checkpoints import load_model
from genlit.cli import main
from genlit.metrics.fid import to_uint8
from genlit.models import AE, GAN
from genlit.networks.autoencoders import ConvDecoder, ConvEncoder
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from genlit.sample import save_folder

TRAINER = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 0
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: true
  callbacks: []
  default_root_dir: {root}
"""
DIGITS = """
model:
  class_path: GAN
  init_args:
    generator:
      class_path: genlit.networks.dcgan.DCGANGenerator
      init_args: {{latent_dim: 8, channels: 1, image_size: 16, width: 8}}
    discriminator:
      class_path: genlit.networks.dcgan.DCGANDiscriminator
      init_args: {{channels: 1, image_size: 16, width: 8}}
data:
  class_path: Digits
  init_args: {{image_size: 16, batch_size: 32, val_fraction: 0.1, seed: 0}}
"""
RING = """
model:
  class_path: GAN
  init_args:
    generator:
      class_path: genlit.networks.mlp.MLPGenerator
      init_args: {{latent_dim: 2, hidden_dim: 16}}
    discriminator:
      class_path: genlit.networks.mlp.MLPDiscriminator
      init_args: {{hidden_dim: 16}}
data:
  class_path: GaussianRing
  init_args: {{batch_size: 32, samples_per_epoch: 64}}
"""


def trained(root: Path, model_yaml: str) -> tuple[Path, Path]:
    """Fits 2 batches with ``genlit fit``; returns (config, checkpoint)."""
    root.mkdir(parents=True)
    config = root.parent / "experiment.yaml"  # the run folder gets its own config.yaml
    config.write_text((TRAINER + model_yaml).format(root=root))
    main(["fit", "--config", str(config)])
    return config, next((root / "checkpoints").glob("*.ckpt"))


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    return trained(tmp_path_factory.mktemp("digits") / "run", DIGITS)


@pytest.fixture(scope="module")
def ring_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    return trained(tmp_path_factory.mktemp("ring") / "run", RING)


def sample(ckpt: Path, out: str | Path, *args: str) -> None:
    main(["sample", "--ckpt", str(ckpt), "--out", str(out), *args])


def expected_uint8(ckpt: Path, chunks: list[int], seed: int = 0) -> np.ndarray:
    """What genlit sample draws: seed, then ``model.sample(b)`` per chunk; uint8 (N, H, W, C)."""
    model = load_model(ckpt)
    torch.manual_seed(seed)
    images = torch.cat([model.sample(b) for b in chunks])
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


# --- folders and arrays ------------------------------------------------------------------------


def test_a_folder_gets_one_grayscale_png_per_sample_in_order(digits_ckpt, tmp_path):
    _, ckpt = digits_ckpt
    sample(ckpt, f"{tmp_path / 'pngs'}/", "--n", "20", "--batch_size", "8")
    files = sorted((tmp_path / "pngs").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(20)]
    images = [Image.open(f) for f in files]
    assert {(im.mode, im.size) for im in images} == {("L", (16, 16))}
    stacked = np.stack([np.asarray(im) for im in images])[..., None]  # (20, 16, 16, 1)
    np.testing.assert_array_equal(stacked, expected_uint8(ckpt, [8, 8, 4]))


def test_an_existing_folder_needs_no_slash_and_rerunning_overwrites(digits_ckpt, tmp_path):
    _, ckpt = digits_ckpt
    folder = tmp_path / "existing"
    folder.mkdir()
    sample(ckpt, folder, "--n", "5")
    sample(ckpt, folder, "--n", "5", "--seed", "1")
    assert len(list(folder.iterdir())) == 5
    again = np.stack([np.asarray(Image.open(f)) for f in sorted(folder.iterdir())])[..., None]
    np.testing.assert_array_equal(again, expected_uint8(ckpt, [5], seed=1))


def test_npz_and_pt_hold_uint8_n_h_w_c(digits_ckpt, tmp_path):
    _, ckpt = digits_ckpt
    sample(ckpt, tmp_path / "s.npz", "--n", "12")
    sample(ckpt, tmp_path / "s.pt", "--n", "12")
    with np.load(tmp_path / "s.npz") as npz:
        assert npz.files == ["arr_0"]  # np.savez's default key, which guided-diffusion reads
        array = npz["arr_0"]
    assert array.dtype == np.uint8 and array.shape == (12, 16, 16, 1)
    np.testing.assert_array_equal(array, expected_uint8(ckpt, [12]))
    tensor = torch.load(tmp_path / "s.pt")
    assert tensor.dtype == torch.uint8 and tensor.shape == (12, 16, 16, 1)
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_rgb_images_are_rgb_pngs(tmp_path):
    images = torch.rand(3, 3, 5, 7) * 2 - 1  # (N, C, H, W) in [-1, 1]
    assert save_folder(iter([images]), tmp_path, 3) == (3, 5, 7)
    first = Image.open(tmp_path / "000000.png")
    assert first.mode == "RGB" and first.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(first), to_uint8(images[0]).permute(1, 2, 0).numpy())


def test_points_go_to_float32_arrays_and_a_scatter_plot(ring_ckpt, tmp_path, capsys):
    _, ckpt = ring_ckpt
    sample(ckpt, tmp_path / "p.npz", "--n", "30")
    sample(ckpt, tmp_path / "p.pt", "--n", "30")
    sample(ckpt, tmp_path / "p.png", "--n", "30")
    with np.load(tmp_path / "p.npz") as npz:
        points = npz["arr_0"]
    assert points.dtype == np.float32 and points.shape == (30, 2)
    model = load_model(ckpt)
    torch.manual_seed(0)
    np.testing.assert_array_equal(points, model.sample(30).numpy())
    np.testing.assert_array_equal(torch.load(tmp_path / "p.pt").numpy(), points)
    assert Image.open(tmp_path / "p.png").format == "PNG"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        sample(ckpt, f"{tmp_path / 'points'}/", "--n", "30")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genlit: error: samples of shape (30, 2) are not images")
    assert "\n" not in err
    assert not (tmp_path / "points").exists()


def test_genlit_evaluate_reads_the_folder_as_it_measures_the_checkpoint(
    digits_ckpt, tmp_path, capsys
):
    config, ckpt = digits_ckpt
    sample(ckpt, f"{tmp_path / 'pngs'}/", "--n", "64")
    common = ["--config", str(config), "--features", "digits", "--split", "val", "--no_kid",
              "--cache_dir", str(tmp_path / "cache")]
    capsys.readouterr()
    main(["evaluate", "--images", str(tmp_path / "pngs"), *common])
    from_folder = capsys.readouterr().out
    main(["evaluate", "--ckpt", str(ckpt), "--num_samples", "64", *common])
    from_ckpt = capsys.readouterr().out
    assert "64 from" in from_folder and "64 from" in from_ckpt
    assert "Digits val split, 180 images of 1x16x16" in from_folder
    # The same 64 images, once through PNG files (lossless): the same FID.
    fid = from_folder.splitlines()[0]
    assert fid.startswith("genlit: FID ") and fid == from_ckpt.splitlines()[0]
    assert float(fid.split()[-1]) > 0


# --- one-line errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "--n must be >= 1"),
        (["--scale", "0"], "--scale must be >= 1"),
        (["--out", "{tmp}/samples.txt"], "end it in / for a folder of PNGs"),
        (["--out", "{tmp}/no_suffix"], "end it in / for a folder of PNGs"),
        (["--out", "{tmp}/a_file/grid.png"], "is a file, not a folder"),
        (["--out", "{tmp}/a_file/deeper/"], "is a file, not a folder"),
        (["--out", "{tmp}/pngs/", "--scale", "2"], "--scale, --nrow and --title shape a .png grid"),
        (["--out", "{tmp}/s.npz", "--title"], "--scale, --nrow and --title shape a .png grid"),
        (["--out", "{tmp}/full/", "--n", "2"], "already holds 1 other images (000002.png"),
    ],
)
def test_bad_values_are_one_line(digits_ckpt, tmp_path, capsys, args, message):
    _, ckpt = digits_ckpt
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "full").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "full" / "000002.png")
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path) for a in args]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        out = [] if "--out" in args else ["--out", str(tmp_path / "g.png")]
        main(["sample", "--ckpt", str(ckpt), *args, *out])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genlit: error: ") and "\n" not in err
    assert message in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


# --- grids ---------------------------------------------------------------------------------------


def test_sample_grid_upscaling_and_title(digits_ckpt, tmp_path):
    _, ckpt = digits_ckpt
    sample(ckpt, tmp_path / "x1.png", "--n", "16")
    sample(ckpt, tmp_path / "x3.png", "--n", "16", "--scale", "3")
    sample(ckpt, tmp_path / "t3.png", "--n", "16", "--scale", "3", "--title")
    assert Image.open(tmp_path / "x1.png").size == (74, 74)  # 4 * (16 + 2) + 2
    plain = np.asarray(Image.open(tmp_path / "x3.png").convert("RGB"))
    assert plain.shape[:2] == (4 * (48 + 2) + 2,) * 2  # each 16x16 image 3 times larger
    one = np.asarray(Image.open(tmp_path / "x1.png").convert("RGB"))
    np.testing.assert_array_equal(plain[2:50, 2:50], one[2:18, 2:18].repeat(3, 0).repeat(3, 1))
    titled = np.asarray(Image.open(tmp_path / "t3.png").convert("RGB"))
    band = titled.shape[0] - plain.shape[0]
    assert band > 0 and titled.shape[1] == plain.shape[1]  # the title fits the grid's width
    np.testing.assert_array_equal(titled[band:], plain)  # the same grid under a band
    assert (titled[:band] < 128).any() and (titled[:band] == 255).mean() > 0.5  # text on white


def fit(model, root: Path, callbacks: list) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks,
    )
    trainer.fit(model, Digits(image_size=8, batch_size=32))
    return trainer


def test_sample_grid_callback_scale_and_title(tmp_path):
    torch.manual_seed(0)
    model = GAN(DCGANGenerator(8, 1, 8, 8), DCGANDiscriminator(1, 8, 8))
    trainer = fit(model, tmp_path, [])
    plain = SampleGrid(num_samples=6, nrow=3, scale=2).draw(trainer, model, step=1)
    assert Image.open(plain).size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    titled = SampleGrid(num_samples=6, nrow=3, scale=2, title=True).draw(trainer, model, step=2)
    plain, titled = (np.asarray(Image.open(p).convert("RGB")) for p in (plain, titled))
    band = titled.shape[0] - plain.shape[0]
    assert band > 0
    # A narrow grid: the title is wrapped at its commas, and the picture widened only if needed.
    np.testing.assert_array_equal(titled[band:, : plain.shape[1]], plain)


def test_the_title_names_the_model_the_generator_step_and_when_fid_was_measured():
    class TinyGAN:
        optimizer_steps_per_generator_step = 2

    model, title = TinyGAN(), RunTitle()
    trainer = SimpleNamespace(callback_metrics={}, global_step=6)
    assert title.parts(trainer, model) == ["TinyGAN", "generator step 3"]
    trainer.callback_metrics["val/fid"] = torch.tensor(12.5)
    title.note(trainer, model)  # after the validation that measured it
    assert title.parts(trainer, model) == ["TinyGAN", "generator step 3", "FID 12.5"]
    trainer.global_step = 10  # no new measurement since
    assert title.parts(trainer, model)[1:] == ["generator step 5", "FID 12.5 (at step 3)"]


def test_reconstruction_rows_are_labelled(tmp_path):
    torch.manual_seed(0)
    model = AE(ConvEncoder(1, 8, 4, width=8), ConvDecoder(4, 1, 8, width=8))
    trainer = fit(model, tmp_path, [])
    settings = [{}, {"scale": 2}, {"labels": True}, {"labels": True, "title": True}]
    plain, scaled, labelled, titled = (
        np.asarray(Image.open(
            ReconstructionGrid(num_images=6, nrow=3, **kwargs).draw(trainer, model, step=epoch)
        ).convert("L"))  # (H, W)
        for epoch, kwargs in enumerate(settings)
    )
    # 4 rows (inputs, outputs, inputs, outputs) of 3 images of 8x8, padding 2.
    assert plain.shape == (4 * 10 + 2, 3 * 10 + 2)
    assert scaled.shape == (4 * 18 + 2, 3 * 18 + 2)
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 0
    np.testing.assert_array_equal(labelled[:, margin:], plain)  # the grid, right of the margin
    assert (labelled[:, :margin] < 128).any()  # "input" / "output" written in the margin
    band = titled.shape[0] - plain.shape[0]
    assert band > 0 and titled.shape[1] >= labelled.shape[1]
    np.testing.assert_array_equal(titled[band:, : labelled.shape[1]], labelled)
