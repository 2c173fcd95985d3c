"""Callbacks that talk to ``GenerativeModel`` only: metrics, pictures, reports."""

from genlit.callbacks.grid import SampleGrid
from genlit.callbacks.summary import RunSummary
from genlit.callbacks.toy import ModeCoverage, ScatterPlot

__all__ = ["ModeCoverage", "RunSummary", "SampleGrid", "ScatterPlot"]
