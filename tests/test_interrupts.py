"""SIGTERM and Ctrl-C: the run stops with exit code 143, saves last.ckpt, and resumes to the end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_an_interrupt_leaves_a_checkpoint_that_resumes_to_the_end(tmp_path, stop, capsys):
    command = [sys.executable, "-m", "genlit", "fit", "--config", str(REPO / "configs/toy/ring_nsgan.yaml"),
               f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
               "--trainer.check_val_every_n_epoch=1000"]
    run = subprocess.Popen([*command, "--generator_steps=100000"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "toy" / "ring_nsgan" / "version_0" / "hparams.yaml"
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    time.sleep(2)  # mid-epoch, a few hundred steps in
    run.send_signal(stop)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    match = re.search(r"interrupted at global step (\d+); saved (\S+);", err)
    assert match, err[-2000:]
    stopped, saved = int(match.group(1)), Path(match.group(2))
    assert saved.name == "last.ckpt" and saved.exists() and stopped > 0
    assert torch.load(saved, weights_only=False)["global_step"] == stopped
    # Resume with a budget a little past the interruption: the run completes it. The signal
    # needed a process of its own; the resumed run is an ordinary fit, here in this process.
    budget = stopped // 2 + 20
    capsys.readouterr()
    main([*command[3:], f"--generator_steps={budget}", "--ckpt_path=last"])
    out = capsys.readouterr().out
    assert f"resuming from {saved}" in out
    assert f"finished at global step {2 * budget} ({budget} generator steps)" in out
