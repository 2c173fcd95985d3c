"""Turns jsonargparse's nested error report into one line: the key, the problem, the choices."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re

from lightning.pytorch import LightningDataModule

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
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p for p in params if p != "self" and params[p].kind not in (
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


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
