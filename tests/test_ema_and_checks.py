"""EMA generator, the data/network compatibility check, and `genlit sample` from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from datamodules.images import Digits
from genlit.cli import main
from genlit.errors import GenlitError
from genlit.models import GAN, WGANGP
from genlit.networks.dcgan import DCGANDiscriminator, DCGANGenerator

REPO = Path(__file__).resolve().parents[1]


def _tiny_gan(size: int = 8, **kwargs) -> GAN:
    return GAN(DCGANGenerator(8, 1, size, 8), DCGANDiscriminator(1, size, 8), **kwargs)


def _trainer(tmp_path: Path, batches: int = 3) -> Trainer:
    return Trainer(
        max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu",
    )


def test_ema_follows_the_generator_with_the_stated_decay(tmp_path):
    torch.manual_seed(0)
    model = _tiny_gan(ema_decay=0.9)
    before = [p.clone() for p in model.generator_ema.module.parameters()]
    trainer = _trainer(tmp_path, batches=1)
    trainer.fit(model, Digits(image_size=8, batch_size=32))
    assert model.generator_updates == 1
    # The first update of torch's AveragedModel copies the weights; check with a second manual one.
    ema = model.generator_ema.module
    assert all(torch.equal(p, q) for p, q in zip(ema.parameters(), model.generator.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(ema.parameters(), before, strict=True))
    old = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    model.generator_ema.update_parameters(model.generator)
    for p_ema, p_old, p_new in zip(ema.parameters(), old, model.generator.parameters(), strict=True):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p_new)


def test_sample_uses_the_averaged_generator():
    torch.manual_seed(0)
    model = _tiny_gan(ema_decay=0.99)
    with torch.no_grad():
        for p in model.generator_ema.module.parameters():
            p.zero_()  # an all-zero generator outputs tanh(0) = 0 everywhere
    assert torch.equal(model.sample(4), torch.zeros(4, 1, 8, 8))
    assert not torch.equal(_tiny_gan().sample(4), torch.zeros(4, 1, 8, 8))


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5])
def test_impossible_ema_decay(bad):
    with pytest.raises(ValueError, match="ema_decay"):
        _tiny_gan(ema_decay=bad)


def test_image_size_mismatch_fails_before_training(tmp_path):
    model = _tiny_gan(size=16)
    with pytest.raises(GenlitError, match=r"image_size=8 .* image_size=16"):
        _trainer(tmp_path).fit(model, Digits(image_size=8, batch_size=32))
    assert model.discriminator_updates == 0


def test_critic_with_batch_norm_is_refused_for_wgan_gp():
    with pytest.raises(ValueError, match="batch_norm"):
        WGANGP(DCGANGenerator(8, 1, 16, 8), DCGANDiscriminator(1, 16, 8, batch_norm=True))


def test_cli_mismatch_is_one_line(tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/digits/nsgan.yaml"), "--data.init_args.image_size=28",
              "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("genlit: error: Digits gives image_size=28")
    assert "model.init_args.generator.init_args.image_size" in last


def test_sample_command_from_a_checkpoint(tmp_path):
    config = REPO / "configs" / "digits" / "nsgan.yaml"
    main(["fit", "--config", str(config), "--generator_steps=2", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
          "--trainer.callbacks=[]", "--trainer.enable_checkpointing=true",
          f"--trainer.default_root_dir={tmp_path}"])
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "grid.png"
    main(["sample", "--ckpt", str(ckpt), "--n", "16", "--out", str(out)])
    # 4 x 4 grid of 16x16 images with 2-pixel padding: 4 * 18 + 2 = 74 pixels a side.
    assert Image.open(out).size == (74, 74)


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign"])
def test_bad_checkpoints_are_one_line(tmp_path, kind, capsys):
    ckpt = tmp_path / "model.ckpt"
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, ckpt)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genlit: error: checkpoint")
    assert not (tmp_path / "x.png").exists()
