"""Resuming with other settings: said in one line, and the budget stays in generator steps."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
RING = str(REPO / "configs/toy/ring_nsgan.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
         "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true"]


def fit(tmp_path: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    main(["fit", "--config", RING, f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET, *extra])
    return capsys.readouterr().out


def test_changed_k_and_batch_size_are_said_and_the_budget_stays_in_generator_steps(tmp_path, capsys):
    fit(tmp_path, capsys, "--generator_steps=2")  # k=1: 2 generator steps are global step 4
    last = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["genlit_run"]["batch_size"] == 256
    out = fit(tmp_path, capsys, "--generator_steps=6", "--ckpt_path=last", "--model.init_args.k=4",
              "--data.init_args.batch_size=128")
    said = [line for line in out.splitlines() if "changed settings" in line]
    assert said == ["genlit: resuming with changed settings: k 1 -> 4, batch_size 256 -> 128 (the "
                    "checkpoint made 2 generator steps with the old ones)"], out
    # 4 more generator steps at k=4 (5 optimizer steps each): 6 in all, global step 4 + 20.
    # Converting the whole budget at today's rate (6 x 5 = 30) would have made 7.
    assert re.search(r"finished at global step 24 \(6 generator steps\)", out), out
    newest = max(tmp_path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(newest, weights_only=True)["global_step"] == 24


def test_resuming_with_the_same_settings_says_nothing_of_them(tmp_path, capsys):
    fit(tmp_path, capsys, "--generator_steps=2")
    out = fit(tmp_path, capsys, "--generator_steps=3", "--ckpt_path=last")
    assert "changed settings" not in out
    assert re.search(r"finished at global step 6 \(3 generator steps\)", out), out
