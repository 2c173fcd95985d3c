"""`genlit sample` from a checkpoint: a grid from a trained run, one line for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]


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
