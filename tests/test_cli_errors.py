"""Config mistakes on the genlit command line: one line, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny import run_in_process

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genlit", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )


def test_unknown_model_is_one_line_with_exit_code_2_in_a_real_process():
    # The whole way a user sees it: a fresh interpreter, `python -m genlit`, its exit status.
    result = run_cli("fit", "--config", "configs/toy/ring_nsgan.yaml", "--model=NoSuchGAN")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("genlit: error:")]
    assert len(errors) == 1, result.stderr
    assert "NoSuchGAN" in errors[0]
    assert "GAN" in errors[0].replace("NoSuchGAN", "")  # names the choices
    assert "Traceback" not in result.stderr


# An unknown model, key or datamodule and a wrong type are rows of tests/test_bad_input.py's
# table (same config, same arguments, exit code 2, and the earlier run left untouched).
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.init_args.loss=squared"], "squared"),
    ],
    ids=["bad-choice"],
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
