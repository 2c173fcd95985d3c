"""What a run prints: a few plain lines in a file, one bar in generator steps in a terminal,
evaluation lines above it, no noise; and a ``--help`` that lists every subcommand."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules.toy import GaussianRing
from genlit.callbacks import GeneratorProgressBar, SampleGrid
from genlit.callbacks.progress import with_progress_bar, write
from genlit.cli import main
from genlit.console import RANK_ZERO_LOGGERS, quiet_lightning_tips
from genlit.models import GAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quickstart.yaml"
NOISE = ("Tip", "LeafSpec", "smaller than the logging interval")


class OneNumber(LightningModule):
    """The cheapest training step: a run's length in steps costs next to nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(bar: Callback, *others: Callback, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_model_summary=False, limit_val_batches=0, callbacks=[bar, *others], **kwargs)


def _small_gan(k: int) -> GAN:
    return GAN(MLPGenerator(latent_dim=2, data_dim=2, hidden_dim=8, num_layers=1),
               MLPDiscriminator(data_dim=2, hidden_dim=8, num_layers=1), k=k)


def _small_quickstart(tmp_path: Path) -> Path:
    """The quickstart writing into tmp_path, with a small final FID (300 samples, no KID)."""
    config = yaml.safe_load(QUICK.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"] == "FID":
            callback["init_args"].update(num_samples=300, kid=False)
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- stdout in a file: plain lines --------------------------------------------------------------


def test_a_quickstart_sized_run_writes_a_few_plain_lines_without_carriage_returns(capsys):
    # 1,200 steps, as the quickstart's generator steps; capsys's stdout is no terminal.
    trainer = _trainer(GeneratorProgressBar(), max_steps=1200)
    capsys.readouterr()
    trainer.fit(OneNumber(), DataLoader(torch.ones(16, 1), batch_size=4))
    out = capsys.readouterr().out
    assert len(out.encode()) < 20_000 and "\r" not in out
    lines = out.splitlines()
    steps = [int(re.match(r"genlit: step (\d+)/1200 \(\d+%\)  loss \S+  \S+ steps/s$", line)[1])
             for line in lines]
    assert steps == list(range(48, 1201, 48))  # a line every 25th of the budget, the last at 1200
    assert lines[-1].startswith("genlit: step 1200/1200 (100%)  loss ")


def test_genlit_fit_into_a_file_prints_plain_lines_and_the_fid_line_in_order(tmp_path, capsys):
    capsys.readouterr()
    main(["fit", "--config", str(_small_quickstart(tmp_path)), "--generator_steps=4"])
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("genlit: step ")] == [
        f"genlit: step {n}/4 ({25 * n}%)" for n in range(1, 5)]
    fid = next(i for i, line in enumerate(lines) if line.startswith("val/fid "))
    assert "(generator step 4;" in lines[fid]
    assert lines[fid + 1].startswith("genlit: step 4/4 (100%)")  # measured at the last step


# --- a terminal: one bar in generator steps -----------------------------------------------------


@pytest.mark.parametrize(
    "k, max_steps, max_epochs, budget",
    [(1, 40, -1, 20),  # 2 optimizer steps a generator step
     (2, -1, 3, 15)],  # 3 epochs of 10 batches, a generator step every 2nd batch
    ids=["max_steps", "max_epochs"],
)
def test_the_bar_counts_generator_steps_against_the_whole_budget(
    k, max_steps, max_epochs, budget, monkeypatch, capsys
):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    bar = GeneratorProgressBar()
    trainer = _trainer(bar, max_steps=max_steps, max_epochs=max_epochs)
    trainer.fit(_small_gan(k), GaussianRing(batch_size=8, samples_per_epoch=80))
    assert bar.budget == budget
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (budget, budget)
    assert trainer.global_step == budget * (k + 1)
    out = capsys.readouterr().out
    assert f"| {budget}/{budget} [" in out and "genlit: step" not in out


class SaysSomething(Callback):
    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        if trainer.global_step == 10:
            write(trainer, "val/fid 12.5 (generator step 5)")


def test_evaluation_lines_go_above_the_bar_in_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    trainer = _trainer(GeneratorProgressBar(), SaysSomething(), max_steps=20)
    trainer.fit(_small_gan(1), GaussianRing(batch_size=8, samples_per_epoch=80))
    pieces = capsys.readouterr().out.split("\r")
    # tqdm clears the bar, writes the line, and draws the bar again under it.
    assert "val/fid 12.5 (generator step 5)\n" in pieces
    assert sum("val/fid 12.5" in piece for piece in pieces) == 1


def test_genlits_bar_comes_in_place_of_lightnings_unless_the_config_names_one():
    grid = SampleGrid()
    (added,) = with_progress_bar(None, None)
    assert isinstance(added, GeneratorProgressBar)
    with_grid = with_progress_bar([grid], True)
    assert with_grid[0] is grid and isinstance(with_grid[1], GeneratorProgressBar)
    own = [grid, TQDMProgressBar(refresh_rate=10)]
    assert with_progress_bar(own, None) is own
    assert with_progress_bar([grid], False) == [grid]  # enable_progress_bar: false


# --- noise ------------------------------------------------------------------------------------


def test_a_quickstart_run_prints_no_tips_and_no_warnings_about_lightning(tmp_path):
    # A real run, not fast_dev_run: Lightning checks the logging interval only outside it.
    result = subprocess.run(
        [sys.executable, "-m", "genlit", "fit", "--config", str(_small_quickstart(tmp_path)),
         "--generator_steps=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished at global step 4 (2 generator steps)" in result.stdout
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr, noise


def test_the_tip_filter_drops_the_tips_and_nothing_else(caplog):
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning_tips()
        quiet_lightning_tips()  # twice: still one filter
        try:
            rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
            rank_zero_info("GPU available: False, used: False")
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
        finally:
            for name in RANK_ZERO_LOGGERS:
                logger = logging.getLogger(name)
                filters = [f for f in logger.filters if type(f).__name__ == "_NoTips"]
                assert len(filters) == 1
                logger.removeFilter(filters[0])
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    assert [str(w.message) for w in caught] == ["another FutureWarning"]


# --- help ---------------------------------------------------------------------------------------


def test_help_lists_every_subcommand_and_says_genlit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: genlit [")
    for name in ("fit", "validate", "test", "sample", "evaluate"):
        assert re.search(rf"^ +{name} +\S", out, re.MULTILINE), name
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert capsys.readouterr().out.startswith("usage: genlit [options] fit ")


def test_network_help_by_short_name_in_a_fresh_process():
    # A fresh interpreter: no config has imported the network's module by its class path.
    code = (
        "import sys\n"
        "from genlit.cli import main\n"
        "for name in ('DCGANGenerator', 'MLPGenerator'):\n"
        "    try:\n"
        "        main(['fit', '--model', 'GAN', '--model.generator.help', name])\n"
        "    except SystemExit as exit_info:\n"
        "        print(f'exit {exit_info.code}', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.count("exit 0\n") == 2, result.stdout[-2000:] + result.stderr[-2000:]
    dcgan, mlp, _ = result.stdout.split("exit 0\n")
    assert dcgan.startswith("usage: genlit [--generator.latent_dim")
    assert "genlit.networks.dcgan.DCGANGenerator" in dcgan and "--generator.width" in dcgan
    assert "genlit.networks.mlp.MLPGenerator" in mlp and "--generator.hidden_dim" in mlp


# --- TensorBoard ------------------------------------------------------------------------------


def test_the_tensorboard_piece_stacks_on_an_experiment_and_installs_alone(capsys):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(QUICK), "--config", str(REPO / "configs/logger/tensorboard.yaml"),
              "--print_config"])
    logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    assert (logger["init_args"]["save_dir"], logger["init_args"]["name"]) == ("runs", "quickstart")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("tensorboard", "test"):
        assert any(re.match(r"tensorboard\b", req) for req in extras[extra]), extra
