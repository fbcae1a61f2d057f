"""Typed errors: library code raises these, the CLI turns them into one line on stderr."""


class GoogLeNetError(Exception):
    """A problem the user can fix (bad name, bad input, bad file). The CLI exits with code 2."""


class UnknownModelError(GoogLeNetError, ValueError):
    """A model name that is not registered."""


class InputSizeError(GoogLeNetError, ValueError):
    """An input tensor a model cannot take (wrong rank, channel count, or too small)."""


class DataError(GoogLeNetError):
    """Data that is missing or cannot be read."""
