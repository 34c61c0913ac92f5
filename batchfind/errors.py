"""The one family of errors the core raises; the CLI maps each to a message and an exit code."""


class BatchfindError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI returns."""

    exit_code = 1


class InputError(BatchfindError):
    """Bad input: a config file, a field, an option or a data file."""

    exit_code = 2


class NothingFits(BatchfindError):
    """Even the smallest batch runs out of memory."""

    exit_code = 3
