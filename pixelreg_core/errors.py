"""The one error type of the core: a mistake the user can fix (its own module so every registry can raise it
without importing the config)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A mistake the user can fix. Printed as one line: the field, what is wrong, and the fix."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
