"""The genlit command: config mistakes are one line and exit code 2; budgets in generator steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--trainer.logger=false", "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genlit", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )


def run_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Runs ``genlit ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_model_is_one_line_with_exit_code_2_in_a_real_process():
    # The whole way a user sees it: a fresh interpreter, `python -m genlit`, its exit status.
    result = run_cli("fit", "--config", "configs/toy/ring_nsgan.yaml", "--model=NoSuchGAN")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("genlit: error:")]
    assert len(errors) == 1, result.stderr
    assert "NoSuchGAN" in errors[0]
    assert "GAN" in errors[0].replace("NoSuchGAN", "")  # names the choices
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=NoSuchGAN"], "NoSuchGAN"),
        (["--model.init_args.los=hinge"], "los"),
        (["--model.init_args.loss=squared"], "squared"),
        (["--model.init_args.k=three"], "three"),
        (["--data=NoSuchData"], "NoSuchData"),
    ],
    ids=["unknown-model", "unknown-key", "bad-choice", "wrong-type", "unknown-datamodule"],
)
def test_config_mistakes_are_one_line_with_exit_code_2(args, expected, capsys):
    code, _, err = run_in_process(capsys, "fit", "--config", str(REPO / "configs/toy/ring_nsgan.yaml"), *args)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("genlit: error:")]
    assert len(errors) == 1, err
    assert expected in errors[0]
    assert "Traceback" not in err


def test_impossible_hyperparameter_is_one_line(capsys):
    code, _, err = run_in_process(
        capsys, "fit", "--config", str(REPO / "configs/toy/ring_nsgan.yaml"), "--model.init_args.k=0"
    )
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("genlit: error: k ")
    assert "Traceback" not in err


def test_print_config_round_trips(tmp_path, capsys):
    code, printed, err = run_in_process(
        capsys, "fit", "--config", str(REPO / "configs/toy/ring_wgan.yaml"), "--print_config"
    )
    assert code == 0, err
    assert "torch.optim.RMSprop" in printed and "class_path: genlit.models.WGAN" in printed
    saved = tmp_path / "config.yaml"
    saved.write_text(printed)
    code, again, err = run_in_process(capsys, "fit", "--config", str(saved), "--print_config")
    assert code == 0 and again == printed, err


def test_generator_steps_become_optimizer_steps(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    seen = {}
    original = LightningCLI._run_subcommand

    def spy(self, subcommand):
        original(self, subcommand)
        seen["global_step"] = self.trainer.global_step
        seen["g"] = self.model.generator_updates
        seen["d"] = self.model.discriminator_updates

    LightningCLI._run_subcommand = spy
    try:
        main(["fit", "--config", str(REPO / "configs/toy/ring_wgan_gp.yaml"), "--generator_steps=3",
              f"--trainer.default_root_dir={tmp_path}", *QUICK])
    finally:
        LightningCLI._run_subcommand = original
    # n_critic = 5: each generator step is 5 critic steps + 1 generator step.
    assert seen == {"global_step": 18, "g": 3, "d": 15}


def test_user_classes_by_import_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    (tmp_path / "cfg.yaml").write_text(
        "data:\n  class_path: user_classes.Circle\n  init_args: {batch_size: 16, samples_per_epoch: 64}\n"
        "model:\n  class_path: user_classes.TinyGAN\n"
    )
    main(["fit", "--config", str(tmp_path / "cfg.yaml"), "--trainer.max_steps=4",
          f"--trainer.default_root_dir={tmp_path}", *QUICK])
