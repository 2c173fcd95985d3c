"""Callbacks that talk to ``GenerativeModel`` only: metrics, pictures, reports."""

from genlit.callbacks.classes import ClassCoverage
from genlit.callbacks.curves import Curves
from genlit.callbacks.fid import FID
from genlit.callbacks.grid import SampleGrid
from genlit.callbacks.interrupt import ResumeOnInterrupt
from genlit.callbacks.latents import LatentPictures
from genlit.callbacks.progress import GeneratorProgressBar
from genlit.callbacks.reconstruction import ReconstructionGrid
from genlit.callbacks.summary import RunSummary
from genlit.callbacks.toy import ModeCoverage, ScatterPlot

__all__ = ["ModeCoverage", "RunSummary", "SampleGrid", "ScatterPlot"]
__all__ += ["ReconstructionGrid"]
__all__ += ["FID", "ResumeOnInterrupt"]
__all__ += ["Curves"]
__all__ += ["GeneratorProgressBar"]
__all__ += ["ClassCoverage"]
__all__ += ["LatentPictures"]
