"""What the ``genlit`` command keeps off the console: lines every run printed that say nothing
about the run. Called by ``genlit.cli.main`` only; importing genlit changes no logging or
warning setting.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's rank_zero_info writes through this logger (lightning.pytorch sets it in
# lightning_utilities' rank_zero module); lightning.fabric alone uses its own.
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _NoTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning_tips() -> None:
    """Silences Lightning's tips and a deprecation of Lightning's own code, for this process.

    * The litlogger and litmodels tips: Lightning prints them at every run with nothing to
      switch them off (no setting, no environment variable); a logging filter on the logger
      they go through drops them and nothing else (the same logger says "GPU available",
      "Seed set to 0", genlit's FID lines without a progress bar).
    * torch's FutureWarning "``isinstance(treespec, LeafSpec)`` is deprecated", raised by
      ``lightning/pytorch/utilities/_pytree.py`` (Lightning's copy of ``tree_flatten``) at the
      first training step: nothing a user can change.

    Calling it again adds nothing.
    """
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
