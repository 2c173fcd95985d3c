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
     ({"num_codes": 0}, "num_codes")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _glann(**kwargs)


def test_a_mapper_for_other_codes_is_refused():
    with pytest.raises(ValueError, match="set the mapper's latent_dim to 16"):
        GLANN(DCGANGenerator(16, 1, 8, 16), CodeMapper(8, 12, 64))
