"""One meaning of a training budget: whichever the user gave last wins, as for every other key.

A budget can be given as ``generator_steps`` (genlit's unit: generator updates, the unit of
every paper's budget) or as Lightning's ``trainer.max_steps`` (optimizer steps: ``k + 1`` per
generator step for a GAN) / ``trainer.max_epochs``, in a config file or on the command line.
LightningCLI merges configs and flags in order, so "last wins" holds for each key, but these
are different keys: this module reads the order the user gave them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genlit.errors import GenlitError

_TRAINER_KEYS = ("max_steps", "max_epochs")


@dataclass(frozen=True)
class BudgetSource:
    """Where a budget key was given: the key, its value, and the config file or ``command line``."""

    key: str
    value: Any
    source: str
    position: int


def _given(key: str, value: Any) -> bool:
    # Lightning's "no limit": max_steps -1, max_epochs None or -1.
    if value is None:
        return False
    if key in _TRAINER_KEYS and value == -1:
        return False
    return True


def _from_config(path: str, position: int) -> list[BudgetSource]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return []  # the parser reports an unreadable config itself
    if not isinstance(config, dict):
        return []
    found = []
    if _given("generator_steps", config.get("generator_steps")):
        found.append(BudgetSource("generator_steps", config["generator_steps"], path, position))
    trainer = config.get("trainer")
    if isinstance(trainer, dict):
        for key in _TRAINER_KEYS:
            if _given(key, trainer.get(key)):
                found.append(BudgetSource(f"trainer.{key}", trainer[key], path, position))
    keys = {s.key for s in found}
    if "generator_steps" in keys and keys & {"trainer.max_steps", "trainer.max_epochs"}:
        other = next(s for s in found if s.key != "generator_steps")
        raise GenlitError(
            f"{path} sets two budgets, generator_steps: {config['generator_steps']} and "
            f"{other.key}: {other.value}: keep one (generator_steps counts generator updates)"
        )
    return found


def budget_sources(argv: list[str]) -> list[BudgetSource]:
    """Every budget key in ``argv`` (config files read in place), in the order given."""
    found: list[BudgetSource] = []
    flags = {"--generator_steps": "generator_steps", "--trainer.max_steps": "trainer.max_steps",
             "--trainer.max_epochs": "trainer.max_epochs"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if not eq and i + 1 < len(argv) and name in (*flags, "--config", "-c"):
            value, i = argv[i + 1], i + 1
        if name in ("--config", "-c"):
            found.extend(_from_config(value, i))
        elif name in flags:
            key = flags[name]
            parsed = yaml.safe_load(value) if value else None
            if _given(key.rsplit(".", 1)[-1], parsed):
                found.append(BudgetSource(key, parsed, "the command line", i))
        i += 1
    return found


def winning_budget(argv: list[str]) -> BudgetSource | None:
    """The budget given last, or ``None`` when none was given."""
    sources = budget_sources(argv)
    return sources[-1] if sources else None
