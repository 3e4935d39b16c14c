"""The one error type of the core, a mistake the user can fix (its own module so every registry can raise it
without importing the config), and the one way an exception becomes the line a trials row or a log shows."""

from __future__ import annotations


class ConfigError(ValueError):
    """A mistake the user can fix. Printed as one line: the field, what is wrong, and the fix."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


ERROR_CHARS = 2000  # the longest `error` a trials row holds: a whole message, but never a traceback-sized cell


def error_line(exc: BaseException) -> str:
    """`Type: message`, its first line only and at most ERROR_CHARS long: what a trials row's `error` and the
    launch's log say about a failure."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:ERROR_CHARS]
