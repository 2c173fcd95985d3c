"""Studies: every config of a study file trained with every seed and setting, on Optuna.

See :mod:`genlit.studies.spec` for the study file, :mod:`genlit.studies.worker` for how the
workers share the trials, and :mod:`genlit.studies.report` for the report.
"""

from genlit.studies.spec import Job, StudySpec, load_study

__all__ = ["Job", "StudySpec", "load_study"]
