"""Metrics torchmetrics lacks: mode coverage of 2-D mixtures (and, later, ELBO surgery)."""

from genlit.metrics.modes import ModeStats, mode_statistics

__all__ = ["ModeStats", "mode_statistics"]
