"""User-facing errors.

Every mistake a user can make (bad config key, missing dataset, eps out of range, foreign
checkpoint) raises a subclass of :class:`UserError`. The CLI prints its one-line message and exits
with code 2, without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message is a complete one-line explanation."""

    exit_code: int = 2


class ConfigError(UserError):
    """An invalid recipe, override or command-line value."""


class DatasetNotFoundError(UserError):
    """A dataset could not be read from the path tried."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupted, or not a unirobust checkpoint."""


class RunDirError(UserError):
    """A run directory exists already (refused), is in use, or is not a resumable run."""


class OutputError(UserError, OSError):
    """A file or directory could not be written (read-only, not a directory, disk full).

    Also an :class:`OSError`, so code that handles I/O failures keeps handling it."""


class TrainingDivergedError(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""
