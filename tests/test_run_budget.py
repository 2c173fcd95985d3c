"""One meaning of a budget (the one given last), one unit of "step" (generator steps), and an
evaluation that never misses the end of a run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quickstart.yaml"
RING_GP = REPO / "configs" / "toy" / "ring_wgan_gp.yaml"


def _small_quickstart(tmp_path: Path, **changes) -> Path:
    """The quickstart with a small FID (300 samples vs the 1,617 training digits)."""
    config = yaml.safe_load(QUICK.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["enable_progress_bar"] = False
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"] == "FID":
            callback["init_args"].update(num_samples=300, kid=False)
    config.update(changes)
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _rows(tmp_path: Path, name: str = "quickstart") -> list[dict[str, str]]:
    (metrics,) = (tmp_path / "runs").glob(f"{name}/version_*/metrics.csv")
    with metrics.open() as f:
        return list(csv.DictReader(f))


def _fit(capsys, *args: str) -> str:
    capsys.readouterr()
    main(["fit", *args])
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_max_steps_given_after_the_configs_generator_steps_wins(tmp_path, capsys):
    out = _fit(capsys, "--config", str(_small_quickstart(tmp_path)), "--trainer.max_steps=40")
    # 40 optimizer steps of a GAN with k = 1 are 20 generator steps (the config says 1,200).
    assert "budget trainer.max_steps=40 optimizer steps = 20 generator steps" in out
    assert "finished at global step 40 (20 generator steps)" in out


def test_generator_steps_given_after_max_steps_wins(tmp_path, capsys):
    out = _fit(capsys, "--config", str(_small_quickstart(tmp_path)), "--trainer.max_steps=40",
               "--generator_steps=15")
    assert "finished at global step 30 (15 generator steps)" in out


def test_a_config_with_two_budgets_is_one_line(tmp_path, capsys):
    config = _small_quickstart(tmp_path, trainer={**yaml.safe_load(QUICK.read_text())["trainer"], "max_steps": 50})
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"genlit: error: {config} sets two budgets, generator_steps: 1200 and "
                   "trainer.max_steps: 50: keep one (generator_steps counts generator updates)"]


def test_fast_dev_run_wins_over_generator_steps_and_skips_evaluations(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path / "cwd" if (tmp_path / "cwd").mkdir() is None else tmp_path)
    out = _fit(capsys, "--config", str(_small_quickstart(tmp_path)), "--trainer.fast_dev_run=true")
    assert "finished at global step 2 (1 generator steps)" in out
    assert "val/fid" not in out
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written into the current directory


def test_every_finished_run_reports_its_final_fid_at_its_last_generator_step(tmp_path, capsys, caplog):
    # 30 generator steps end mid-epoch (25 batches an epoch), long before the config's FID epoch.
    caplog.set_level("INFO")
    out = _fit(capsys, "--config", str(_small_quickstart(tmp_path)), "--generator_steps=30")
    assert "finished at global step 60 (30 generator steps)\n  val/fid " in out
    assert any("(generator step 30;" in r.getMessage() for r in caplog.records)
    rows = [r for r in _rows(tmp_path) if r.get("val/fid")]
    assert [int(r["step"]) for r in rows] == [30]


def test_evaluation_every_n_generator_steps_and_the_step_axis_in_generator_steps(tmp_path, capsys):
    # WGAN-GP: 6 optimizer steps per generator step; Lightning alone would log against batches.
    config = yaml.safe_load(RING_GP.read_text())
    config["trainer"]["logger"] = {"class_path": "CSVLogger",
                                   "init_args": {"save_dir": str(tmp_path / "runs"), "name": "ring"}}
    config["trainer"].update(enable_progress_bar=False, log_every_n_steps=10, check_val_every_n_epoch=1000)
    config["trainer"]["callbacks"] = [
        {"class_path": "ModeCoverage", "init_args": {"num_samples": 200, "every_n_epochs": None,
                                                      "every_n_steps": 8}}]
    config["generator_steps"] = 20
    path = tmp_path / "ring.yaml"
    path.write_text(yaml.safe_dump(config))
    _fit(capsys, "--config", str(path))
    rows = _rows(tmp_path, "ring")
    assert [int(r["step"]) for r in rows if r.get("val/modes")] == [8, 16, 20]
    train_steps = [int(r["step"]) for r in rows if r.get("train/d_loss")]
    # Logged every 10 batches = every 10 critic updates = every 2 generator steps (n_critic 5).
    assert train_steps and max(train_steps) <= 20 and train_steps == sorted(train_steps)
    assert train_steps[:3] == [2, 4, 6]


def test_genlit_test_reports_test_fid(tmp_path, capsys):
    config = _small_quickstart(tmp_path)
    _fit(capsys, "--config", str(config), "--generator_steps=5")
    (ckpt,) = (tmp_path / "runs").glob("quickstart/version_0/checkpoints/last.ckpt")
    capsys.readouterr()
    main(["test", "--config", str(config), f"--ckpt_path={ckpt}"])
    out = capsys.readouterr().out
    assert "test/fid" in out


def test_genlit_predict_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(QUICK)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "genlit sample" in err[0]
