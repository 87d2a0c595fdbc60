"""Exceptions that the CLI turns into one-line messages.

Every error a user can cause (bad config, bad data, a diverging inner loop, a broken
checkpoint) derives from :class:`MetaplasticError`, so the CLI can print ``error: ...`` and
exit non-zero instead of showing a traceback.
"""


class MetaplasticError(Exception):
    """Base class of all errors caused by user input or by a run going wrong."""


class ConfigError(MetaplasticError):
    """A malformed config, an unknown key, a bad value or an unknown rule name."""


class ShapeError(MetaplasticError):
    """Tensors whose shapes do not fit the network or the task."""


class DataError(MetaplasticError):
    """Missing, corrupt or non-finite data."""


class DivergenceError(MetaplasticError):
    """The inner loop produced NaN or inf (``step``: the meta-step, when known)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class CheckpointError(MetaplasticError):
    """A checkpoint that is missing, corrupt or from an incompatible version."""


class JobError(MetaplasticError):
    """A job of a parallel run (a suite's run) whose process ended without a result: killed, out of memory."""


class UsageError(MetaplasticError):
    """Command-line arguments that do not parse (an unknown option, a value of the wrong kind)."""
