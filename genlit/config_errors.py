"""Turns jsonargparse's nested error report into one line: the key, the problem, the choices.

Config files are read here first (:func:`check_config_files`): a YAML error then names the
file and its line, which jsonargparse's report of a string it could not parse leaves out.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule

from genlit.errors import GenlitError
from genlit.models.base import GenerativeModel

_GENERIC = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
            "Expected a path but")


def _subclass_names(base: type) -> list[str]:
    found, stack = set(), [base]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if not sub.__name__.startswith("_") and not inspect.isabstract(sub):
                module = sub.__module__
                if module.startswith(("genlit", "datamodules")):
                    found.add(sub.__name__)
    return sorted(found)


def _choices(root: str) -> list[str]:
    if root == "model":
        return [n for n in _subclass_names(GenerativeModel) if n not in ("AdversarialModel",)]
    if root == "data":
        return [n for n in _subclass_names(LightningDataModule) if not n.endswith("DataModule")]
    return []


def _init_params(class_path: str) -> list[str]:
    """The arguments a class accepts, its bases' too where its ``__init__`` passes ``*args`` or
    ``**kwargs`` on (as jsonargparse resolves them): the bases' first."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    found: list[str] = []
    for klass in getattr(cls, "__mro__", (cls,)):
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            params = inspect.signature(klass.__init__).parameters
        except (ValueError, TypeError):
            break
        named = [p for p, v in params.items() if p != "self" and v.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        found = [*named, *(p for p in found if p not in named)] if found else named
        if not any(v.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                   for v in params.values()):
            break
    return found


def explain(message: str) -> str:
    """One line naming the config key at fault, what is wrong, and the accepted values."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    # The key: every 'Parser key "x"' on the way down, joined with init_args as in the YAML.
    keys = re.findall(r'Parser key "([^"]+)"', message)
    key = ".init_args.".join(keys)
    class_paths = re.findall(r"Problem with given class_path '([^']+)'", message)
    specific = [
        line.lstrip("- ") for line in lines
        if not line.startswith(("Parser key", "Problem with given class_path"))
        and not any(g in line for g in _GENERIC)
    ]
    cause = specific[-1] if specific else (lines[0] if lines else "invalid arguments")

    if m := re.search(r"Expected a dot import path string: (\S+)", message) or re.search(
        r"module '[^']+' has no attribute '([^']+)'", message
    ):
        name = m.group(1)
        choices = _choices(keys[0] if keys else "")
        hint = f"; choose one of {', '.join(choices)}" if choices else ""
        return f'{key}: unknown class "{name}"{hint}, or give a full import path (package.module.Class)'
    if m := re.search(r"Option '([^']+)' is not accepted", message):
        option = m.group(1)
        params = _init_params(class_paths[-1]) if class_paths else []
        close = difflib.get_close_matches(option, params, n=1)
        did_you_mean = f' (did you mean "{close[0]}"?)' if close else ""
        where = f" of {class_paths[-1]}" if class_paths else ""
        accepted = f"; accepted keys: {', '.join(params)}" if params else ""
        return f'{key}.init_args: unknown key "{option}"{where}{did_you_mean}{accepted}'
    if m := re.search(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", message):
        return f'{key}: "{m.group(2)}" is not one of {m.group(1)}'
    if m := re.search(r"Expected a <class '([^']+)'>\. Got value: (.*)", cause):
        return f'{key}: expected a value of type {m.group(1)}, got "{m.group(2)}"'
    if m := re.search(r"does not accept option '([^']+)'", message) or re.search(
        r"unrecognized arguments: (\S+)", message
    ):
        return f'unknown key "{m.group(1).lstrip("-").split("=")[0]}": check its spelling against --help'
    cause = re.sub(r"\s+", " ", cause)
    return f"{key}: {cause}" if key and not cause.startswith("Parser key") else cause


_KINDS = {list: "a list", str: "a single string", int: "a number", float: "a number", bool: "a boolean"}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of keys a YAML config file holds.

    Raises:
        GenlitError: the file cannot be read, is not YAML (naming its line and the problem), is
            empty, or holds something other than a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise GenlitError(f"cannot read config {path}: {reason}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        lines = str(err).strip().splitlines()
        problem = getattr(err, "problem", None) or (lines[0] if lines else type(err).__name__)
        raise GenlitError(f"{path}{where}: {problem}") from None
    if config is None:
        raise GenlitError(f"{path} is empty: a config is a YAML mapping of keys")
    if not isinstance(config, dict):
        kind = _KINDS.get(type(config), type(config).__name__)
        raise GenlitError(f"{path} holds {kind}, not a mapping of keys (model:, data:, trainer:)")
    return config


def config_paths(argv: Sequence[str]) -> list[str]:
    """The values of every ``--config``/``-c`` in ``argv`` that name an existing file."""
    values = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            values.append(arg.split("=", 1)[1])
    return [value for value in values if Path(value).is_file()]


def check_config_files(argv: Sequence[str]) -> None:
    """Reads every config file named in ``argv`` before LightningCLI does (see the module).

    Raises:
        GenlitError: as :func:`load_config_file`.
    """
    for path in config_paths(argv):
        load_config_file(path)
