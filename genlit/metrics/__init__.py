"""Metrics torchmetrics lacks: mode and class coverage, ELBO surgery, precision and recall, and
FID/KID around feature networks, and data-copying figures beside them.

The pure functions (:mod:`~genlit.metrics.modes`, :mod:`~genlit.metrics.elbo`) import at once;
the FID stack (:mod:`~genlit.metrics.fid`, :mod:`~genlit.metrics.features`, which load
torchmetrics' image metrics and the feature networks) only when one of its names is asked
for, so that a model using ``elbo_surgery`` does not pull it in. The layering is one way:
models and callbacks import metrics, metrics never import them.
"""

from __future__ import annotations

import importlib
from typing import Any

from genlit.metrics.elbo import ElboSurgery, elbo_surgery, log_aggregate_posterior
from genlit.metrics.modes import ModeStats, mode_statistics

# name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "FeatureDistances": "genlit.metrics.fid",
    "ReferenceStats": "genlit.metrics.fid",
    "reference_statistics": "genlit.metrics.fid",
    "to_uint8": "genlit.metrics.fid",
    "FeatureExtractor": "genlit.metrics.features",
    "load_features": "genlit.metrics.features",
    "Copying": "genlit.metrics.copying",
    "CopyingStats": "genlit.metrics.copying",
    "ClassCounter": "genlit.metrics.classes",
    "ClassStats": "genlit.metrics.classes",
    "class_statistics": "genlit.metrics.classes",
    "ManifoldStats": "genlit.metrics.manifold",
    "manifold_statistics": "genlit.metrics.manifold",
}

__all__ = ["ModeStats", "mode_statistics"]
__all__ += ["ElboSurgery", "elbo_surgery", "log_aggregate_posterior"]
__all__ += sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
