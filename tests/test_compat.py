"""Each reach into Lightning's or torch's private API (genlit/_compat.py) against the installed library.

When an upgrade moves one of these, the test here fails and names it; nothing else in genlit
touches a private attribute (checked by the source scan at the end).
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DDPStrategy

from genlit import _compat

REPO = Path(__file__).resolve().parents[1]


class _Recorder(LightningModule):
    """Records what the compat functions say at every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, bool, int]] = []

    def training_step(self, batch, batch_idx):
        trainer = self.trainer
        self.seen.append((trainer.global_step, _compat.logs_this_step(trainer), _compat.logged_step(trainer)))
        self.log("loss", batch_idx * 1.0)
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(12, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)


def test_logs_this_step_and_logged_step_follow_log_every_n_steps(tmp_path):
    model = _Recorder()
    trainer = Trainer(max_steps=6, log_every_n_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    # Lightning writes at batches 3 and 6 (1-based): the steps before them say True.
    assert [log for _, log, _ in model.seen] == [False, False, True, False, False, True]
    assert [step for _, _, step in model.seen] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("complete", [False, True])
def test_complete_batch_progress_is_what_lightning_does_after_the_batch_hooks(complete, tmp_path):
    from lightning.pytorch import Callback

    class FailsAtBatch2(Callback):  # what ResumeOnInterrupt meets: a batch-end hook that raises
        def on_train_batch_end(self, trainer, *args):
            if trainer.fit_loop.epoch_loop.batch_progress.current.processed == 2:
                if complete:
                    _compat.complete_batch_progress(trainer)
                    _compat.complete_batch_progress(trainer)  # a second call changes nothing
                raise RuntimeError("fails")

    trainer = Trainer(max_steps=4, logger=False, enable_checkpointing=False, callbacks=[FailsAtBatch2()],
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError):
        trainer.fit(_Recorder())
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    # Lightning counts the batch completed only after its hooks; the call does it for them.
    assert (current.processed, current.completed) == ((2, 2) if complete else (2, 1))


def test_find_unused_parameters_reaches_the_ddp_wrapper_arguments():
    strategy = DDPStrategy()
    _compat.find_unused_parameters(strategy)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}
    kept = DDPStrategy(find_unused_parameters=False)
    _compat.find_unused_parameters(kept)  # the user's explicit value wins
    assert kept._ddp_kwargs == {"find_unused_parameters": False}


def test_lightning_cli_still_merges_checkpoint_hyperparameters_through_the_hook_genlit_overrides():
    assert callable(getattr(LightningCLI, "_parse_ckpt_path", None))
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
    assert "_parse_ckpt_path" in _compat.KeepConfigModelOnResume.__dict__


def test_the_nvml_probe_exists_and_only_ever_turns_the_check_off(monkeypatch):
    assert callable(torch.cuda._is_compiled) and callable(torch.cuda._device_count_nvml)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    _compat.skip_failing_nvml_probe()
    value = os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
    expected = "0" if torch.cuda._is_compiled() and torch.cuda._device_count_nvml() < 0 else "1"
    assert value == expected
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "7")
    _compat.skip_failing_nvml_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "7"


# Private names that belong to genlit's own classes and may be used anywhere.
def _own_private_names() -> set[str]:
    names: set[str] = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def _sources() -> list[Path]:
    return [p for folder in ("genlit", "datamodules") for p in (REPO / folder).rglob("*.py")]


# Attributes that other libraries' base classes define and genlit's subclasses must not touch.
_LIBRARY_ATTRIBUTES = {"_trainer", "_experiment", "_wandb_init", "_save_dir", "_log_model", "_id",
                       "_logger_connector", "_signal_connector", "_ddp_kwargs"}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_api_outside_the_compat_module(path):
    if path.name == "_compat.py":
        return
    own = _own_private_names() - _LIBRARY_ATTRIBUTES
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if node.attr not in own:
                found.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith(
            ("genlit", "datamodules", "__future__")
        ):
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private or any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import {private}")
    assert not found, f"private API used outside genlit/_compat.py: {found}"


def test_torch_fidelity_precision_recall_of_points_on_a_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # each real 1-NN ball has radius 1
    fake = torch.tensor([[0.5], [1.5], [10.0], [11.0]])  # two in the real balls; 1-NN radius 1
    precision, recall = _compat.precision_recall(fake, real, nearest_k=1)
    assert precision == 0.5
    assert recall == 0.75  # 0, 1 and 2 lie within 1 of 0.5 or 1.5; 3 does not (1.5 away)


class _Counted(_Recorder):
    """Manual optimization of the same layer and data; records global_step at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.steps: list[int] = []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.layer(batch[0]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        _compat.step_directly(opt)
        self.steps.append(self.trainer.global_step)


def test_step_directly_keeps_lightnings_step_count_and_moves_the_weights(tmp_path):
    model = _Counted()
    before = model.layer.weight.detach().clone()
    trainer = Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    assert model.steps == [1, 2, 3, 4]  # the marks Lightning's manual loop counts steps with
    assert trainer.global_step == 4
    assert not torch.equal(model.layer.weight, before)


def test_direct_steps_possible_names_what_needs_lightnings_machinery(tmp_path):
    from lightning.pytorch import Callback

    class Hooked(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pass

    class Backward(_Counted):
        def backward(self, loss, *args, **kwargs):
            loss.backward()

    def reason(model=None, **kwargs):
        trainer = Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path, **kwargs)
        return _compat.direct_steps_possible(trainer, model or _Counted())

    assert reason() is None
    assert reason(callbacks=[Hooked()]) == "the Hooked callback's on_before_optimizer_step"
    assert reason(Backward()) == "Backward.backward"
    assert reason(precision="bf16-mixed") is None  # no loss scaler: nothing to do around the step
    assert reason(precision="64-true") == "64-true precision"
    assert "strategy" in reason(strategy=DDPStrategy(), devices=1, accelerator="cpu")
