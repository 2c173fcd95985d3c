"""GLANN: unit-norm codes, IMLE lowering the distance from mapped noise to the codes, positions
in batches, sampling from a checkpoint alone, the Laplacian-pyramid loss and bad settings."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from tiny import run_in_process

from datamodules.images import Digits
from genlit.checkpoints import load_model
from genlit.errors import GenlitError
from genlit.losses import laplacian_l1_loss, laplacian_pyramid
from genlit.models import GLANN
from genlit.networks.dcgan import DCGANGenerator
from genlit.networks.glann import CodeMapper, VGGPerceptualDistance


def _glann(**kwargs) -> GLANN:
    return GLANN(DCGANGenerator(16, 1, 8, 16), CodeMapper(8, 16, 64), **kwargs)


def _digits(**kwargs) -> Digits:
    return Digits(image_size=8, batch_size=32, val_fraction=0.1, **{"indices": True, **kwargs})


def _trainer(tmp_path, epochs: int, **kwargs) -> Trainer:
    return Trainer(
        max_epochs=epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        accelerator="cpu", **kwargs,
    )


class _Distances(Callback):
    """The IMLE matching distance each epoch starts with."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not pl_module.in_glo_stage():
            self.values.append(float(pl_module.assign_noise()[1]))


def test_codes_stay_unit_norm_and_imle_lowers_the_distance_to_the_codes(tmp_path):
    seed_everything(0)
    model = _glann(glo_epochs=10)
    distances = _Distances()
    _trainer(tmp_path, 16, callbacks=[distances]).fit(model, _digits())
    norms = model.codes.weight.detach().norm(dim=1)
    assert model.codes.num_embeddings == 1797  # every image of the source, the held-out ones too
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # The mean distance from each code to its nearest of 2N mapped noise vectors, at the start
    # of each IMLE epoch: the first is the untrained mapper's.
    first, last = distances.values[0], distances.values[-1]
    assert len(distances.values) == 6
    assert last < 0.8 * first, distances.values
    assert model.mapper_trained
    # GLO learned codes that decode to their own images: closer to them than to other images.
    datamodule = _digits()
    datamodule.setup("fit")
    positions = torch.arange(64)
    images, _ = datamodule.gather(positions)
    decoded = model.decode_codes(positions)
    own = laplacian_l1_loss(decoded, images).mean()
    other = laplacian_l1_loss(decoded, images.roll(1, 0)).mean()
    assert own < 0.7 * other, (own, other)


class _Snapshots(Callback):
    """Every network's weights at the start of each epoch."""

    def __init__(self) -> None:
        self.at: list[dict[str, list[torch.Tensor]]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.at.append({name: [p.detach().clone() for p in net.parameters()]
                        for name, net in [("generator", pl_module.generator), ("mapper", pl_module.mapper),
                                          ("codes", pl_module.codes)]})


def _same(model: GLANN, name: str, snapshot: dict[str, list[torch.Tensor]]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(getattr(model, name).parameters(), snapshot[name], strict=True))


def test_the_glo_stage_leaves_the_mapper_and_the_imle_stage_the_generator_and_codes(tmp_path):
    seed_everything(0)
    model = _glann(glo_epochs=1)
    snapshots = _Snapshots()
    _trainer(tmp_path, 2, limit_train_batches=5, callbacks=[snapshots]).fit(model, _digits())
    glo_start, imle_start = snapshots.at
    assert _same(model, "mapper", glo_start) is False
    assert all(torch.equal(p, q) for p, q in zip(imle_start["mapper"], glo_start["mapper"], strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(imle_start["generator"], glo_start["generator"], strict=True))
    assert _same(model, "generator", imle_start) and _same(model, "codes", imle_start)


@pytest.mark.parametrize("in_memory", [True, False])
def test_indices_add_each_images_position_and_nothing_else_changes(in_memory):
    plain, indexed = Digits(image_size=8, batch_size=16, in_memory=in_memory), _digits(in_memory=in_memory)
    for datamodule in (plain, indexed):
        datamodule.setup("fit")
    batch = next(iter(indexed.train_dataloader()))
    batch = indexed.on_after_batch_transfer(batch, 0)
    x, y, positions = batch
    assert positions.dtype == torch.int64 and positions.shape == (32,)
    # The positions point at the very images of the batch in the source split.
    source = Digits(image_size=8, batch_size=16, in_memory=True)
    source.setup("fit")
    images, labels = source.gather(positions)
    torch.testing.assert_close(x, images)
    assert torch.equal(y, labels)
    assert indexed.index_count == 1797
    plain_batch = plain.on_after_batch_transfer(next(iter(plain.train_dataloader())), 0)
    assert len(plain_batch) == 2  # other models see (images, labels), as before


def test_sampling_from_a_checkpoint_needs_no_training_data(tmp_path, capsys):
    code, _, err = run_in_process(
        capsys, "fit", "--config", "configs/digits/glann.yaml", "--model.init_args.glo_epochs=1",
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.callbacks=[]",
        "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_checkpointing=true",
    )
    assert code == 0, err[-2000:]
    ckpt = next(tmp_path.rglob("*.ckpt"))
    model = load_model(ckpt)
    assert model.codes.num_embeddings == 1797 and model.mapper_trained
    torch.manual_seed(0)
    samples = model.sample(8)
    assert samples.shape == (8, 1, 16, 16) and samples.abs().max() <= 1
    code, out, err = run_in_process(capsys, "sample", "--ckpt", str(ckpt), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert code == 0, err[-2000:]
    assert (tmp_path / "s.png").exists()


def test_without_positions_in_batches_it_is_one_line(tmp_path):
    with pytest.raises(GenlitError, match="set data.init_args.indices: true"):
        _trainer(tmp_path, 3).fit(_glann(glo_epochs=1), _digits(indices=False))


def test_a_budget_inside_the_glo_stage_is_refused(tmp_path):
    with pytest.raises(GenlitError, match="ends inside the GLO stage"):
        _trainer(tmp_path, 3).fit(_glann(glo_epochs=3), _digits())


def test_the_perceptual_loss_without_vgg_weights_is_one_line(tmp_path):
    with pytest.raises(GenlitError, match="needs VGG16's ImageNet weights, not found at .*reconstruction: laplacian"):
        _glann(reconstruction="perceptual", vgg_weights=str(tmp_path / "missing.pth"))


def test_the_perceptual_loss_loads_vgg16_features_from_a_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16().features[:16]
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    distance = VGGPerceptualDistance(path)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert distance(x, x).tolist() == [0.0, 0.0]
    assert (distance(x, -x) > 0).all()
    model = _glann(reconstruction="perceptual", vgg_weights=str(path))
    assert not any(k.startswith("_perceptual") or "features" in k for k in model.state_dict())
    torch.save({"classifier.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(GenlitError, match="not a VGG16 state dict"):
        VGGPerceptualDistance(tmp_path / "other.pth")


def test_laplacian_l1_is_zero_for_equal_images_and_the_difference_for_a_constant_shift():
    x = torch.rand(3, 2, 32, 32)
    assert laplacian_l1_loss(x, x).tolist() == [0.0, 0.0, 0.0]
    # A constant shift lives in the low-pass residual only (4x4 of 32x32), weighted 4^3.
    torch.testing.assert_close(laplacian_l1_loss(x + 0.25, x), torch.full((3,), 0.25))
    assert [b.shape[-1] for b in laplacian_pyramid(x, 4)] == [32, 16, 8, 4]
    # The bands add back up to the image: x = L0 + up(L1 + up(L2 + up(residual))).
    bands = laplacian_pyramid(x, 4)
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):
        rebuilt = band + torch.nn.functional.interpolate(rebuilt, size=band.shape[-2:], mode="bilinear",
                                                         align_corners=False)
    torch.testing.assert_close(rebuilt, x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"glo_epochs": 0}, "glo_epochs"), ({"codes_lr": 0.0}, "codes_lr"), ({"imle_candidates": 0}, "imle_candidates"),
     ({"num_codes": 0}, "num_codes"), ({"lr_halving_epochs": 0}, "lr_halving_epochs")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _glann(**kwargs)


def test_a_mapper_for_other_codes_is_refused():
    with pytest.raises(ValueError, match="set the mapper's latent_dim to 16"):
        GLANN(DCGANGenerator(16, 1, 8, 16), CodeMapper(8, 12, 64))


def test_sample_codes_lie_on_the_unit_sphere_before_and_after_imle():
    torch.manual_seed(0)
    model = _glann(num_codes=40)
    # Before IMLE: draws of the codes' Gaussian, each projected onto the sphere the codes live on.
    assert not model.mapper_trained
    norms = model.sample_codes(64).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # After: the mapper's T(e), projected alike (an untrained mapper's outputs are far from norm 1).
    model.imle_epoch.fill_(0)
    model.mapper.eval()
    raw = model.mapper(torch.randn(64, model.noise_dim)).norm(dim=1)
    assert (raw - 1).abs().max() > 0.1, raw
    norms = model.sample_codes(64).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_samples_decode_the_mapped_noise_divided_by_its_norm():
    torch.manual_seed(0)
    model = _glann(num_codes=40)
    model.imle_epoch.fill_(0)
    torch.manual_seed(1)
    e = torch.randn(8, model.noise_dim)
    model.eval()
    with torch.no_grad():
        mapped = model.mapper(e)
        expected = model.generator(mapped / mapped.norm(dim=1, keepdim=True))
    model.train()
    torch.manual_seed(1)
    samples = model.sample(8)
    torch.testing.assert_close(samples, expected)
    assert model.generator.training and model.mapper.training  # sample() restores the modes


def test_the_mapper_has_batch_norm_and_no_biases_only_when_asked():
    plain, normed = CodeMapper(8, 16, 64), CodeMapper(8, 16, 64, batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, torch.nn.Linear))
    # The official _netT: Linear (no bias), BatchNorm1d, ReLU, twice, then Linear (no bias).
    assert [type(m).__name__ for m in normed.net] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert all(m.bias is None for m in normed.modules() if isinstance(m, torch.nn.Linear))
    assert normed(torch.randn(5, 8)).shape == plain(torch.randn(5, 8)).shape == (5, 16)


@pytest.mark.parametrize(("reduction", "divisor"), [("sum", 3), ("mean", 3 * 16)])
def test_the_imle_loss_sums_or_averages_the_squared_error_of_each_code(reduction, divisor):
    torch.manual_seed(0)
    model = _glann(num_codes=10, imle_loss=reduction)
    model.imle_noise = torch.randn(10, model.noise_dim)
    positions = torch.tensor([0, 3, 7])
    with torch.no_grad():
        error = (model.mapper(model.imle_noise[positions]) - model.codes.weight[positions]).pow(2)  # (3, 16)
    # sum: over each code's 16 entries, then the batch's mean; mean: over all 3 x 16 entries.
    torch.testing.assert_close(model.imle_step(positions)["loss"], error.sum() / divisor)


class _Rates(Callback):
    """Each stage optimizer's learning rates and Adam state size at each epoch's first batch."""

    def __init__(self) -> None:
        self.at: list[tuple[list[float], int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            opt = pl_module.optimizers()[0 if pl_module.in_glo_stage() else 1].optimizer
            self.at.append(([g["lr"] for g in opt.param_groups], bool(opt.state)))


def test_rates_halve_within_each_stage_and_fresh_optimizers_start_each_epoch_empty(tmp_path):
    seed_everything(0)
    rates = _Rates()
    model = _glann(glo_epochs=2, lr_halving_epochs=1, fresh_optimizers=True)
    _trainer(tmp_path, 4, limit_train_batches=3, callbacks=[rates]).fit(model, _digits())
    # GLO: generator 1e-3 (Adam's default) and codes 1e-2, halved in its second epoch; IMLE's
    # own count starts again at 1e-3. Every epoch begins with no Adam state.
    assert rates.at == [([1e-3, 1e-2], False), ([5e-4, 5e-3], False), ([1e-3], False), ([5e-4], False)]
    kept = _Rates()
    seed_everything(0)
    _trainer(tmp_path, 4, limit_train_batches=3, callbacks=[kept]).fit(_glann(glo_epochs=2), _digits())
    assert kept.at == [([1e-3, 1e-2], False), ([1e-3, 1e-2], True), ([1e-3], False), ([1e-3], True)]


def test_the_generator_sees_every_code_on_the_sphere_and_epoch_projection_waits_for_the_epoch(tmp_path):
    torch.manual_seed(0)
    model = _glann(num_codes=1797, codes_init_std=0.01, codes_projection="epoch", glo_epochs=1)
    norms = model.codes.weight.norm(dim=1)
    assert norms.max() < 0.1  # 16 entries of std 0.01: norms near 0.04
    datamodule = _digits()
    datamodule.setup("fit")
    positions = torch.arange(8)
    images, _ = datamodule.gather(positions)
    z = model.codes(positions)
    expected = laplacian_l1_loss(model.generator(z / z.norm(dim=1, keepdim=True)), images).mean()
    torch.testing.assert_close(model.glo_step(images, positions)["loss"], expected)
    norms_seen = []

    class _Norms(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            norms_seen.append(pl_module.codes.weight.detach().norm(dim=1).min().item())

    _trainer(tmp_path, 2, limit_train_batches=3, callbacks=[_Norms()]).fit(model, datamodule)
    assert max(norms_seen[:3]) < 0.2  # unprojected inside the epoch
    norms = model.codes.weight.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # projected at its end


def test_the_fid_tables_budget_gives_glann_whole_glo_epochs_of_the_generator_steps_then_imle_epochs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fid_table.py"
    spec = importlib.util.spec_from_file_location("fid_table", path)  # benchmarks/ is no package
    fid_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid_table)
    # MNIST: 57,000 training images (val_fraction 0.05) in batches of 128 make 445 per epoch.
    assert fid_table.budget_arguments("mnist", "glann", 1000) == [
        "--model.init_args.glo_epochs=2", f"--trainer.max_epochs={2 + fid_table.IMLE_EPOCHS}"]
    assert fid_table.budget_arguments("mnist", "glann", 100)[0] == "--model.init_args.glo_epochs=1"
    assert fid_table.budget_arguments("mnist", "nsgan", 1000) == ["--generator_steps=1000", "--trainer.max_epochs=-1"]
