"""Errors that the CLI reports as one clear line instead of a traceback."""


class UlfineError(Exception):
    """A user-facing error: bad configuration, missing data or weights, bad input files.

    The CLI prints ``error: <message>`` and exits with status 2, so every message must say what
    was wrong and, where possible, how to fix it.
    """


class ConfigError(UlfineError):
    """The configuration is invalid: unknown key, wrong type or out-of-range value."""


class DataError(UlfineError):
    """A dataset is missing, truncated, or cannot provide the split that was asked for."""


class WeightsError(UlfineError):
    """Model weights cannot be found or downloaded (e.g. offline without a local file)."""


class UnsafeFileError(UlfineError):
    """A file ulfine was asked to read could run code when loaded (a pickle); it is refused."""


class ResourceError(UlfineError):
    """The machine ran out of something (disk space, accelerator memory); the message names the
    settings to change."""


class NumericalError(UlfineError):
    """Training produced a non-finite loss (``train.on_nonfinite=stop``)."""


class HubError(UlfineError):
    """The Hugging Face Hub cannot serve a request: downloads are off, no token, a repository or
    revision that does not exist, or the Hub refused (``ulfine push``, ``hf-hub:`` models)."""
