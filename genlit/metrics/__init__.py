"""Metrics torchmetrics lacks: mode coverage of 2-D mixtures (and, later, ELBO surgery)."""

from genlit.metrics.elbo import ElboSurgery, elbo_surgery, log_aggregate_posterior
from genlit.metrics.features import FeatureExtractor, load_features
from genlit.metrics.fid import FeatureDistances, ReferenceStats, reference_statistics, to_uint8
from genlit.metrics.modes import ModeStats, mode_statistics

__all__ = ["ModeStats", "mode_statistics"]
__all__ += ["ElboSurgery", "elbo_surgery", "log_aggregate_posterior"]
__all__ += [
    "FeatureDistances",
    "FeatureExtractor",
    "ReferenceStats",
    "load_features",
    "reference_statistics",
    "to_uint8",
]
