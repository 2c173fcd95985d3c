"""The core's contracts: importing is free of side effects, networks are declared once and
everything reads that declaration, each argument is declared once and still listed in --help."""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from toy_family import EnergyGAN

from genlit.checkpoints import architecture, check_same_architecture, read_checkpoint
from genlit.cli import main
from genlit.errors import GenlitError
from genlit.models import AE, GAN, VAE, WAE, WGAN, WGANGP, AdversarialModel
from genlit.models.ae import AutoencoderModel
from genlit.models.wgan import WassersteinGAN
from genlit.networks.mlp import MLPDiscriminator, MLPGenerator

REPO = Path(__file__).resolve().parents[1]
adam = functools.partial(torch.optim.Adam, lr=1e-3)


@pytest.mark.xdist_group("fresh_import")
def test_importing_genlit_leaves_the_environment_and_warning_filters_alone(fresh_import):
    # fresh_import (conftest.py): a new interpreter imported Lightning, then every genlit module
    # and both datamodule modules; what changed in between is genlit's doing.
    result = {key: fresh_import[key] for key in ("env", "filters", "same")}
    assert result == {"env": [], "filters": 0, "same": True}


def test_every_model_declares_its_networks():
    assert AdversarialModel.networks == ("generator", "discriminator")
    assert GAN.networks == WGAN.networks == WGANGP.networks == ("generator", "discriminator")
    assert AE.networks == VAE.networks == AutoencoderModel.networks == ("encoder", "decoder")
    assert WAE.networks == ("encoder", "decoder", "discriminator")


def test_networks_and_optimizer_factories_stay_out_of_the_hyperparameters():
    model = GAN(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8), adam, adam, loss="hinge", k=2)
    assert dict(model.hparams) == {"loss": "hinge", "k": 2, "ema_decay": None,
                                   "compile_generator": False, "compile_discriminator": False,
                                   "channels_last": False, "capture": False}
    assert model.discriminator_steps == 2 and model.optimizer_steps_per_generator_step == 3


def test_one_name_for_the_discriminator_steps_at_the_base():
    g, d = MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8)
    assert GAN(g, d, k=3).discriminator_steps == 3
    assert WGAN(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8)).discriminator_steps == 5
    assert WGANGP(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8), n_critic=2).discriminator_steps == 2
    assert "k" not in inspect.signature(AdversarialModel.__init__).parameters
    assert "n_critic" not in inspect.signature(AdversarialModel.__init__).parameters


def test_family_defaults_come_from_the_class_not_a_copied_signature():
    wgan = WGAN(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8))
    gan = GAN(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8))
    assert isinstance(wgan.configure_optimizers()[0], torch.optim.RMSprop)
    assert isinstance(gan.configure_optimizers()[0], torch.optim.Adam)


def _own_parameters(cls: type) -> set[str]:
    init = cls.__dict__.get("__init__")
    if init is None:
        return set()
    return {name for name, p in inspect.signature(init).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def test_each_adversarial_argument_is_declared_once():
    classes = [AdversarialModel, GAN, WassersteinGAN, WGAN, WGANGP]
    seen: dict[str, str] = {}
    for cls in classes:
        for name in _own_parameters(cls):
            assert name not in seen, f"{name} declared in {seen.get(name)} and {cls.__name__}"
            seen[name] = cls.__name__
    for cls in (AE, VAE):
        assert not _own_parameters(cls) & _own_parameters(AutoencoderModel)


@pytest.mark.parametrize(
    ("model", "arguments"),
    [
        ("GAN", ["generator", "discriminator", "generator_optimizer", "discriminator_optimizer",
                 "loss", "k", "ema_decay", "compile_generator", "compile_discriminator", "channels_last"]),
        ("WGAN", ["generator", "discriminator", "clip", "n_critic", "ema_decay", "channels_last"]),
        ("WGANGP", ["generator", "discriminator", "gp_weight", "n_critic", "compile_discriminator"]),
        ("AE", ["encoder", "decoder", "optimizer", "reconstruction", "ex_post", "refit_on_train_end"]),
        ("VAE", ["encoder", "decoder", "optimizer", "likelihood", "beta", "binarize"]),
        ("WAE", ["encoder", "decoder", "discriminator", "optimizer", "regularizer", "reg_weight"]),
    ],
)
def test_model_help_lists_every_argument_with_its_docstring(model, arguments, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", model])
    text = " ".join(capsys.readouterr().out.split())
    for name in arguments:
        entry = text.split(f"--model.{name} ")
        assert len(entry) > 1, f"--model.{name} missing from --model.help {model}"
        doc = entry[-1].split("(")[0].strip()
        assert len(doc) > 10, f"--model.{name} has no docstring in --model.help {model}: {doc!r}"
    if model in ("GAN", "WGAN"):
        # The gradient-penalty caveat belongs to WGAN-GP's step, documented once at the base.
        assert text.count("gradient penalty") <= 1


# --- a new family: one extra network, declared in its own file ---------------------------------


def _energy_gan(width: int = 8) -> EnergyGAN:
    return EnergyGAN(MLPGenerator(hidden_dim=8), MLPDiscriminator(hidden_dim=8), adam, adam,
                     energy=nn.Linear(2, width), energy_optimizer=adam)


def test_a_new_family_with_an_extra_network_gets_the_shared_machinery(tmp_path):
    torch.manual_seed(0)
    model = _energy_gan()
    assert [name for name, _ in model.declared_networks()] == ["generator", "discriminator", "energy"]
    assert "energy" not in model.hparams and "energy_optimizer" not in model.hparams
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in model.declared_networks()}
    trainer = Trainer(max_steps=9, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    from datamodules.toy import GaussianRing

    trainer.fit(model, GaussianRing(batch_size=16, samples_per_epoch=64))
    # Each phase moved only its own network: the energy phase froze G and D, and theirs froze it.
    assert model.phase_log == [("d_loss", ("generator", "energy")), ("g_loss", ("discriminator", "energy")),
                               ("energy", ("generator", "discriminator"))] * 3
    for name, net in model.declared_networks():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)), name


def test_the_checkpoint_architecture_check_covers_a_new_familys_extra_network(tmp_path):
    torch.manual_seed(0)
    model = _energy_gan()
    path = tmp_path / "energy.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {
        "_class_path": "toy_family.EnergyGAN",
        "generator": {"class_path": "genlit.networks.mlp.MLPGenerator", "init_args": {"hidden_dim": 8}},
        "discriminator": {"class_path": "genlit.networks.mlp.MLPDiscriminator", "init_args": {"hidden_dim": 8}},
        "energy": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 8}},
    }}, path)
    checkpoint = read_checkpoint(path)
    same = {"class_path": "toy_family.EnergyGAN", "init_args": {
        **{k: checkpoint["hyper_parameters"][k] for k in ("generator", "discriminator", "energy")}}}
    check_same_architecture(path, checkpoint, EnergyGAN, same)  # passes
    other = json.loads(json.dumps(same))
    other["init_args"]["energy"]["init_args"]["out_features"] = 16
    with pytest.raises(GenlitError, match="different model .*energy Linear"):
        check_same_architecture(path, checkpoint, EnergyGAN, other)
    assert [key for key, _, _ in architecture(EnergyGAN, "", same["init_args"])[1]] == [
        "generator", "discriminator", "energy"]
