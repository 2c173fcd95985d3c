"""``capture``: the CUDA-graph step's fallback, its checkpoints, and its sync-free pieces (on a CPU).

The graphs themselves need a CUDA device; what a CPU can check is checked here: the option
falls back to the eager step with one warning naming why, trains bit for bit as the eager
step does, writes checkpoints that resume bitwise with the option off (and the other way
round), and the pieces the graphs are built from (the sync-free EMA update, the eager layout
of optimizer states, the reasons a run cannot be captured) do what torch's own code does.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from datamodules.images import Digits
from datamodules.toy import GaussianRing
from genlit.models import BEGAN, GAN, WGAN, WGANGP
from genlit.models.capture import (
    capture_problem,
    eager_optimizer_states,
    ema_update,
    make_capturable,
)
from genlit.networks.began import BEGANAutoencoder, BEGANDecoder
from genlit.networks.dcgan import DCGANGenerator
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9))
CPU_LINE = "capture is off for this run: CUDA graphs need a CUDA device, and this run trains on cpu; the steps run eager"


def gan(capture: bool = False, **kwargs):
    return GAN(MLPGenerator(hidden_dim=32), MLPDiscriminator(hidden_dim=32), adam, adam, ema_decay=0.9,
               capture=capture, **kwargs)


def toy():
    return GaussianRing(batch_size=32, samples_per_epoch=320, val_samples=64)


def fit(model_fn, steps: int, root: Path, every: int | None = None, ckpt: str | None = None, **trainer_kwargs):
    seed_everything(0)
    model = model_fn()
    callbacks = trainer_kwargs.pop("callbacks", [])
    if every is not None:
        callbacks.append(ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="{step}"))
    trainer = Trainer(
        max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
        enable_checkpointing=every is not None, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=root, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, datamodule=toy(), ckpt_path=ckpt)
    return model, trainer


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_capture_on_a_cpu_warns_once_and_trains_as_the_eager_step(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captured, trainer = fit(lambda: gan(capture=True), 14, tmp_path / "a")
    lines = [str(w.message) for w in caught if "capture" in str(w.message)]
    assert lines == [CPU_LINE]
    plain, plain_trainer = fit(gan, 14, tmp_path / "b")
    assert trainer.global_step == plain_trainer.global_step == 14
    assert captured.generator_updates == plain.generator_updates == 7
    assert_same_weights(plain, captured)
    assert captured.hparams.capture is True  # recorded, so a resume says when it changes


@pytest.mark.parametrize("first, then", [(True, False), (False, True)], ids=["captured->eager", "eager->captured"])
def test_a_checkpoint_resumes_bitwise_with_capture_switched(first, then, tmp_path):
    n = 14  # 7 generator steps, the EMA updated each
    whole, _ = fit(gan, 2 * n, tmp_path / "whole")
    fit(lambda: gan(capture=first), n, tmp_path / "half", every=n)
    middle = tmp_path / "half" / f"step={n}.ckpt"
    saved = torch.load(middle, weights_only=True)
    for state in saved["optimizer_states"]:  # the eager layout, whatever the run
        assert all(not group.get("capturable", False) for group in state["param_groups"])
        assert all(s["step"].device.type == "cpu" for s in state["state"].values())
    resumed, trainer = fit(lambda: gan(capture=then), 2 * n, tmp_path / "resumed", ckpt=str(middle))
    assert trainer.global_step == 2 * n
    assert resumed.generator_updates == whole.generator_updates
    assert_same_weights(whole, resumed)


def test_the_sync_free_ema_update_is_torchs_update_bit_for_bit():
    torch.manual_seed(0)
    generator = DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=8)  # batch norm: float and int buffers
    ours = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    theirs = copy.deepcopy(ours)
    optimizer = torch.optim.Adam(generator.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        generator(torch.randn(16, 8)).square().mean().backward()  # also moves the batch-norm statistics
        optimizer.step()
        ema_update(ours, generator)
        theirs.update_parameters(generator)
        assert torch.equal(ours.n_averaged, theirs.n_averaged)
        assert_same_weights(theirs, ours)
    assert ours.genlit_started and int(ours.n_averaged) == 5


def test_optimizer_states_are_written_in_the_eager_layout_without_touching_the_optimizer():
    layer = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    before = make_capturable(optimizer)  # what a captured run's optimizer looks like (steps stay on this CPU)
    assert before == [False]
    assert all(group["capturable"] for group in optimizer.param_groups)
    live = {id(s["step"]) for s in optimizer.state.values()}
    states = [optimizer.state_dict()]
    eager_optimizer_states(states, [before])
    assert all(group["capturable"] is False for group in states[0]["param_groups"])
    configured = [optimizer.state_dict()]
    eager_optimizer_states(configured, [[True]])  # an optimizer the config made capturable stays so
    assert configured[0]["param_groups"][0]["capturable"] is True
    assert all(group["capturable"] for group in optimizer.param_groups)  # the live optimizer keeps its form
    assert {id(s["step"]) for s in optimizer.state.values()} == live
    fresh = torch.optim.Adam(nn.Linear(3, 2).parameters())
    fresh.load_state_dict(states[0])  # loads into an eager optimizer on a CPU
    assert fresh.param_groups[0]["capturable"] is False


class _Probe(Callback):
    """Records what capture_problem says once training starts."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def on_train_start(self, trainer, pl_module):
        self.problem = capture_problem(pl_module, trainer)


def problem_of(model_fn, tmp_path, **trainer_kwargs) -> str | None:
    probe = _Probe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callbacks = [probe, *trainer_kwargs.pop("callbacks", [])]
        fit(model_fn, 2, tmp_path, callbacks=callbacks, **trainer_kwargs)
    return probe.problem


def test_what_keeps_a_run_from_being_captured_is_named(tmp_path):
    assert problem_of(lambda: gan(capture=True), tmp_path) == CPU_LINE.split(": ", 1)[1].split(";")[0]
    sgd = functools.partial(torch.optim.SGD, lr=0.01)
    assert problem_of(lambda: GAN(MLPGenerator(), MLPDiscriminator(), sgd, sgd, capture=True), tmp_path).startswith(
        "CUDA graphs need a CUDA device")  # SGD is graph-safe as it is
    adagrad = functools.partial(torch.optim.Adagrad, lr=0.01)
    assert problem_of(lambda: GAN(MLPGenerator(), MLPDiscriminator(), adagrad, adagrad, capture=True), tmp_path) == (
        "the Adagrad optimizer has no capturable form")
    assert problem_of(lambda: gan(capture=True), tmp_path, precision="bf16-mixed") == (
        "it runs in 32-true precision only, not bf16-mixed")

    class Hooked(Callback):
        def on_after_backward(self, trainer, pl_module):
            pass

    assert problem_of(lambda: gan(capture=True), tmp_path, callbacks=[Hooked()]) == (
        "the Hooked callback's on_after_backward needs Lightning's per-step machinery")


def test_only_families_whose_phases_are_device_work_declare_themselves_capturable(tmp_path):
    assert GAN.capturable and WGAN.capturable and WGANGP.capturable
    assert not BEGAN.capturable  # its k update and balance read the phases' outputs between them
    began = lambda: BEGAN(BEGANDecoder(8, 1, 8, 8), BEGANAutoencoder(1, 8, 8, 8), adam, adam, capture=True)  # noqa: E731
    seed_everything(0)
    probe = _Probe()
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[probe],
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(began(), datamodule=Digits(image_size=8, batch_size=16))
    assert probe.problem == "BEGAN's step is not declared capturable"
