"""The error users see: one line naming the problem and the fix, no traceback."""


class GenlitError(Exception):
    """A mistake in the user's input (config, data, checkpoint) that genlit explains in one line.

    ``python -m genlit`` prints ``genlit: error: <message>`` and exits with code 2.
    """


class TrainingDiverged(GenlitError):
    """A loss became NaN or infinite: training stops, no checkpoint is written after it."""
