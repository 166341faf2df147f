"""Exceptions of the load tester.

One root, so the command line turns every expected failure into one line::

    LoadTestError
    ├── SettingsError   arguments that cannot work (exit code 2)
    ├── InputError      an input source that cannot be loaded or does not fit the model (exit 2)
    └── TargetError     the server cannot be reached or does not know the model (exit 1)
"""

from __future__ import annotations


class LoadTestError(Exception):
    """Root of every error the load tester raises on purpose."""


class SettingsError(LoadTestError):
    """Settings that cannot work; the message says what was received and what was expected."""


class InputError(LoadTestError):
    """Input data that cannot be loaded or does not match the model's input signature."""


class TargetError(LoadTestError):
    """The target server is unreachable, or does not serve the requested model."""
