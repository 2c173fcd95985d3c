"""The genlit command's configs: --print_config round trips, budgets in generator steps, a
user's own classes named by import path."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import run_in_process

from genlit.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--trainer.logger=false", "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
]


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


def test_user_classes_by_import_path(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    (tmp_path / "cfg.yaml").write_text(
        "data:\n  class_path: user_classes.Circle\n  init_args: {batch_size: 16, samples_per_epoch: 64}\n"
        "model:\n  class_path: user_classes.TinyGAN\n"
    )
    import user_classes
    from lightning.pytorch.cli import LightningCLI

    seen = {}
    original = LightningCLI._run_subcommand

    def spy(self, subcommand):
        seen["before"] = {name: [p.detach().clone() for p in net.parameters()]
                          for name, net in self.model.declared_networks()}
        original(self, subcommand)
        seen["cli"] = self

    monkeypatch.setattr(LightningCLI, "_run_subcommand", spy)
    capsys.readouterr()
    main(["fit", "--config", str(tmp_path / "cfg.yaml"), "--trainer.max_steps=4",
          f"--trainer.default_root_dir={tmp_path}", *QUICK])
    cli = seen["cli"]
    assert type(cli.model) is user_classes.TinyGAN and type(cli.datamodule) is user_classes.Circle
    # TinyGAN's own default (hidden=8) built the networks: the first layer maps 2 -> 8.
    assert next(cli.model.generator.parameters()).shape == (8, 2)
    # max_steps counts optimizer steps: k = 1 is one critic and one generator step per batch.
    assert (cli.trainer.global_step, cli.model.discriminator_updates, cli.model.generator_updates) == (4, 2, 2)
    for name, net in cli.model.declared_networks():  # both networks trained
        assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), seen["before"][name], strict=True)), name
    assert "genlit: TinyGAN finished at global step 4 (2 generator steps)" in capsys.readouterr().out
