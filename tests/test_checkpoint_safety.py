"""A checkpoint is data, never code: a crafted ``.ckpt`` runs nothing unless trusted by request.

The crafted file is a pickle whose ``__reduce__`` creates a marker file when unpickled: every
command that reads checkpoints must refuse it in one line (exit 2) without creating the marker,
and take the trusted path (the marker appears) only with ``--trust_checkpoint``.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from genlit.cli import main
from genlit.models import GenerativeModel

REPO = Path(__file__).resolve().parents[1]
RING = str(REPO / "configs" / "toy" / "ring_nsgan.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
         "--data.init_args.samples_per_epoch=512", "--trainer.check_val_every_n_epoch=1000"]


class Payload:
    """Creates ``marker`` when unpickled: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(params=["torch.save", "pickle"])
def crafted(request, tmp_path) -> tuple[Path, Path]:
    """A crafted ``.ckpt`` (as torch.save writes it, or a raw pickle) and its marker's path."""
    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.ckpt"
    content = {"state_dict": {"w": torch.zeros(2)}, "payload": Payload(marker)}
    if request.param == "torch.save":
        torch.save(content, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(content, protocol=2))
    return ckpt, marker


def commands(ckpt: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "sample": ["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "grid.png")],
        "evaluate": ["evaluate", "--ckpt", str(ckpt), "--config", RING, "--features=inception"],
        "fit": ["fit", "--config", RING, f"--ckpt_path={ckpt}", "--generator_steps=2",
                f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *QUIET],
    }


def run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("command", ["sample", "evaluate", "fit"])
def test_a_crafted_checkpoint_runs_nothing(command, crafted, tmp_path, capsys):
    ckpt, marker = crafted
    code, lines = run(capsys, commands(ckpt, tmp_path)[command])
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"genlit: error: checkpoint {ckpt}")
    assert "--trust_checkpoint" in lines[0] and "code" in lines[0]


@pytest.mark.parametrize("command", ["sample", "evaluate", "fit"])
def test_trust_checkpoint_takes_the_trusted_path(command, crafted, tmp_path, capsys):
    ckpt, marker = crafted
    flag = "--trust_checkpoint=true" if command == "fit" else "--trust_checkpoint"
    # The crafted file is no genlit checkpoint: the command fails after unpickling it.
    with pytest.raises((SystemExit, Exception)):
        main([*commands(ckpt, tmp_path)[command], flag])
    assert marker.exists(), "the opt-in did not unpickle the file in full"


def test_load_from_checkpoint_in_python_is_safe_by_default(crafted):
    ckpt, marker = crafted
    with pytest.raises(pickle.UnpicklingError):
        GenerativeModel.load_from_checkpoint(ckpt)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - the trusted path runs it, then finds no model
        GenerativeModel.load_from_checkpoint(ckpt, weights_only=False)
    assert marker.exists()


def test_genlit_checkpoints_load_resume_and_sample_with_the_default(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    fit = ["fit", "--config", RING, f"--trainer.logger.init_args.save_dir={runs}", *QUIET]
    main([*fit, "--generator_steps=3"])
    ckpt = next(runs.rglob("last.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=True)  # tensors and plain containers only
    assert checkpoint["global_step"] == 6

    seen: dict[str, object] = {}
    original = Trainer.fit

    @functools.wraps(original)  # LightningCLI reads fit's signature for its arguments
    def spy(self, *args, **kwargs):
        seen["weights_only"] = kwargs.get("weights_only")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spy)
    main([*fit, "--generator_steps=5", f"--ckpt_path={ckpt}"])
    assert seen["weights_only"] is True  # Lightning's own restore reads data only
    resumed = max(runs.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(resumed, weights_only=True)["global_step"] == 10

    out = tmp_path / "points.png"
    main(["sample", "--ckpt", str(resumed), "--n", "16", "--out", str(out)])
    assert out.is_file()
    model = GenerativeModel.load_from_checkpoint(resumed)
    assert model.sample(4).shape == (4, 2)
