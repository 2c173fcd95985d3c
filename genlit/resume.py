"""What a resumed ``fit`` continues with: the user's budget in generator steps, and the
settings that differ from the checkpoint's, said in one line.

A checkpoint counts ``global_step`` in optimizer steps, ``k + 1`` per generator step for a GAN:
resumed with another ``k``, a budget converted at today's rate would train a different number
of generator steps than the user asked for. The budget is therefore the generator steps the
checkpoint made plus the ones still to make, at today's rate.
"""

from __future__ import annotations

from typing import Any

_SKIPPED = {"_class_path", "_instantiator"}


def generator_steps_in(checkpoint: dict[str, Any], per_step: int) -> int:
    """The generator steps a checkpoint's run had made."""
    run = checkpoint.get("genlit_run") or {}
    if isinstance(run.get("generator_steps"), int):
        return run["generator_steps"]
    counters = checkpoint.get("genlit_counters") or {}
    if isinstance(counters.get("generator_updates"), int):
        return counters["generator_updates"]
    return int(checkpoint.get("global_step", 0)) // per_step


def resumed_max_steps(checkpoint: dict[str, Any], generator_steps: int, per_step: int) -> int:
    """``trainer.max_steps`` that ends a resumed run after ``generator_steps`` generator steps in all."""
    done = generator_steps_in(checkpoint, per_step)
    return int(checkpoint.get("global_step", 0)) + max(0, generator_steps - done) * per_step


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if not isinstance(values, dict):
        return flat
    for key, value in values.items():
        if key in _SKIPPED:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value.get("init_args", value) if "class_path" in value else value, f"{name}."))
            if "class_path" in value:
                flat[f"{name}.class_path"] = value["class_path"]
        elif isinstance(value, (int, float, str, bool, type(None), list, tuple)):
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def changed_settings(
    checkpoint: dict[str, Any], hparams: dict[str, Any], networks: tuple[str, ...],
    batch_size: int | None, devices: int,
) -> list[str]:
    """``"k 1 -> 2"`` for each model setting, batch size or device count that differs from the
    checkpoint's; the networks are left out (their architecture is checked elsewhere)."""
    saved = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in networks}
    now = {k: v for k, v in dict(hparams).items() if k not in networks}
    before, after = _flat(saved), _flat(now)
    changes = [
        f"{key} {before[key]!r} -> {after[key]!r}".replace("'", "")
        for key in sorted(before.keys() & after.keys())
        if before[key] != after[key]
    ]
    run = checkpoint.get("genlit_run") or {}
    if run.get("batch_size") is not None and batch_size is not None and run["batch_size"] != batch_size:
        changes.append(f"batch_size {run['batch_size']} -> {batch_size}")
    if run.get("devices") is not None and run["devices"] != devices:
        changes.append(f"devices {run['devices']} -> {devices}")
    return changes
