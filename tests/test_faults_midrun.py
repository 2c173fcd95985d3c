"""A run is never lost because something other than training failed: the weights saved by a
failing evaluation resume where the run stopped. (The one-line messages of these failures, and
of what is checked before the first step, are rows of test_bad_input.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule

from genlit.callbacks.rescue import failing_part
from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
RING = str(REPO / "configs/toy/ring_nsgan.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0"]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_a_failing_evaluation_saves_the_weights_then_stops_in_one_line(tmp_path, capsys):
    argv = ["fit", "--config", RING, "--generator_steps=6", f"--trainer.logger.init_args.save_dir={tmp_path}",
            *QUIET]
    code, _, err = run(capsys, [*argv, "--trainer.callbacks+=user_classes.FailingEvaluation"])
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("genlit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "callback FailingEvaluation failed at generator step 3" in lines[0]
    assert "RuntimeError: the metric server is unreachable" in lines[0]
    saved = next(tmp_path.rglob("last.ckpt"))
    assert f"saved in {saved}" in lines[0] and "--ckpt_path last" in lines[0]
    checkpoint = torch.load(saved, weights_only=True)
    assert checkpoint["global_step"] == 6  # 3 generator steps, each after 1 discriminator step
    # The batch that finished before the failure is not trained again on resume.
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert progress["processed"] == progress["completed"] == 3  # 3 batches
    capsys.readouterr()
    main([*argv, "--ckpt_path=last"])
    assert re.search(r"finished at global step 12 \(6 generator steps\)", capsys.readouterr().out)


class Broken(LightningModule):
    def training_step(self, batch, batch_idx):
        raise ValueError("a bug in the model")

    def on_train_end(self):
        raise ValueError("a bug after training")


def _raised(call) -> BaseException:
    try:
        call()
    except ValueError as err:
        return err
    raise AssertionError("nothing raised")


def test_a_failure_of_training_itself_is_not_rescued():
    model = Broken()
    assert failing_part(_raised(lambda: model.training_step(None, 0))) is None
    assert failing_part(_raised(model.on_train_end)) == "Broken.on_train_end"
