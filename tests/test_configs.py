"""Every experiment YAML in configs/ parses and trains two steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from genlit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Pieces stacked on an experiment with a second --config, not experiments themselves.
PIECES = {"logger", "trainer"}
EXPERIMENTS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in PIECES
)


def test_there_are_configs():
    assert len(EXPERIMENTS) >= 5


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_trains_two_steps(config: Path, tmp_path: Path):
    main([
        "fit", "--config", str(config),
        "--generator_steps=null", "--trainer.max_steps=2", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])
