"""The package's layers import one way: networks <- metrics <- models <- callbacks <- cli.

A model may use a pure metric function (``elbo_surgery``) without loading the FID stack, and
nothing under ``genlit/metrics`` or ``genlit/networks`` imports a layer above it, not even
lazily inside a function (the way a cycle hides).
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GENLIT = REPO / "genlit"

# What a layer may not import: every genlit package above it.
ABOVE_METRICS = (
    "genlit.models",
    "genlit.callbacks",
    "genlit.cli",
    "genlit.sample",
    "genlit.evaluate",
)
ABOVE_NETWORKS = ("genlit.metrics", *ABOVE_METRICS, "lightning", "pytorch_lightning")


# fresh_import (conftest.py): a new interpreter imported Lightning, then genlit.models (which
# imports the genlit.metrics package), then asked genlit.metrics for the FID stack.
@pytest.mark.xdist_group("fresh_import")
def test_importing_the_models_leaves_the_fid_stack_and_the_callbacks_out(fresh_import):
    added, everything = fresh_import["models_added"], set(fresh_import["after_models"])
    assert "genlit.models.vae" in added  # the VAE, which uses elbo_surgery, was imported
    assert "genlit.metrics.elbo" in added
    for module in ("genlit.metrics.fid", "genlit.metrics.features", "genlit.callbacks"):
        assert module not in everything
    assert not [m for m in everything if m.startswith("genlit.callbacks.")]
    assert not [m for m in added if m.split(".")[:2] == ["torchmetrics", "image"]]
    assert not [m for m in added if m.startswith("torch_fidelity")]


@pytest.mark.xdist_group("fresh_import")
def test_the_metrics_package_loads_the_fid_stack_only_when_asked(fresh_import):
    # The package was imported (by genlit.models) before `first` was read.
    assert "genlit.metrics" in fresh_import["models_added"]
    assert {k: fresh_import[k] for k in ("first", "then")} == {"first": False, "then": True}

    import genlit.metrics
    from genlit.metrics import fid

    assert genlit.metrics.FeatureDistances is fid.FeatureDistances
    assert {"FeatureDistances", "load_features", "elbo_surgery"} <= set(dir(genlit.metrics))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchMetric'"):
        _ = genlit.metrics.NoSuchMetric


# --- the import graph, read from the source --------------------------------------------------


def imported_modules(source: str, module: str) -> set[str]:
    """Every module ``source`` imports anywhere (inside functions too), relative ones resolved.

    ``module`` is the dotted name of the file (``genlit.metrics.fid``); string arguments of
    ``importlib.import_module`` and ``__import__`` count as imports.
    """
    package = module.rsplit(".", 1)[0].split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if called in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                found.add(str(arg.value))
    return found


def forbidden_imports(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """``{file: [forbidden modules it imports]}`` for every Python file under ``folder``."""
    bad = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] == "__init__":
            module += ".__init__"  # relative imports resolve against the package itself
        names = imported_modules(path.read_text(), module)
        hits = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_the_scan_finds_imports_hidden_in_functions_relative_or_by_name():
    hidden = (
        "def real_batches():\n"
        "    from genlit.models.base import GenerativeModel\n"
        "def other():\n"
        "    from ..models import gan\n"
        "    import importlib\n"
        "    importlib.import_module('genlit.callbacks.fid')\n"
    )
    names = imported_modules(hidden, "genlit.metrics.fid")
    assert {"genlit.models.base", "genlit.models.gan", "genlit.callbacks.fid"} <= names
    assert "genlit.metrics" in imported_modules("from . import fid", "genlit.metrics.__init__")


def test_no_metrics_module_imports_the_models_or_anything_above():
    assert (GENLIT / "metrics" / "fid.py").is_file()  # the scan reads the real files
    assert forbidden_imports(GENLIT / "metrics", ABOVE_METRICS) == {}


def test_networks_are_plain_torch_modules_importing_no_genlit_layer_above_and_no_lightning():
    assert (GENLIT / "networks" / "classifier.py").is_file()
    assert forbidden_imports(GENLIT / "networks", ABOVE_NETWORKS) == {}


# --- where things live -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion_mnist"])
def test_the_shipped_weights_load_into_the_classifier_network_with_its_parameter_names(name):
    from genlit.metrics.features import WEIGHTS_DIR
    from genlit.networks.classifier import SmallClassifier

    saved = torch.load(WEIGHTS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
    network = SmallClassifier(**saved["config"])
    assert set(network.state_dict()) == set(saved["state_dict"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    network.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        network.head[1].weight, saved["state_dict"]["head.1.weight"].float(), rtol=0, atol=0
    )


def test_the_feature_training_script_lives_with_the_scripts_and_runs(monkeypatch, capsys):
    assert not (GENLIT / "metrics" / "train_features.py").exists()
    script = REPO / "scripts" / "train_features.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")  # as `python scripts/train_features.py`
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "python scripts/train_features.py" in out
    assert "{digits,fashion_mnist,mnist}" in out
