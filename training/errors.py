"""Exceptions of the training package.

One root, so the CLI can turn every expected failure into one line and exit code 2::

    TrainingError
    ├── ConfigError   invalid settings (learning rate, epochs, model/data set mismatch)
    └── DataError     a data set that cannot be loaded (missing file, bad CSV, no Fashion-MNIST)
"""

from __future__ import annotations


class TrainingError(Exception):
    """Root of every error the training package raises on purpose."""


class ConfigError(TrainingError):
    """Settings that cannot work; the message says what was received and what was expected."""


class DataError(TrainingError):
    """A data set that cannot be loaded; the message says what is wrong and how to fix it."""
