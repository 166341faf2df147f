"""Model versions as clients send them: KServe's ``model_version`` string, parsed strictly.

Only the plain ASCII decimal spelling of a number in ``1 .. 2**63 - 1`` (Triton's int64
version, the same rule as version directories: ``model_repository.layout``) is accepted,
and ``""`` means the default version. ``str.isdigit()`` is not enough: it accepts ``"²"``
(``int()`` then fails) and other scripts' digits (U+0661, Arabic-Indic one), ``int()``
refuses more than 4,300 digits with an error of its own, and ``"01"`` would silently mean
version 1.
"""

from __future__ import annotations

from model_repository.layout import MAX_VERSION
from model_repository.layout import parse_version as parse_version_name
from serving.errors import InvalidInputError, clip


def parse_version(text: str) -> int:
    """The version ``text`` names; 0 for ``""`` (the default version).

    Raises InvalidInputError (INVALID_ARGUMENT) for anything else than ``1 .. 2**63 - 1``
    in ASCII decimal without leading zeros.
    """
    if not text:
        return 0
    number = parse_version_name(text)
    if number is None:
        raise InvalidInputError(
            f"model_version is {clip(repr(text))}; expected '' (the default version) or a "
            f"decimal number from 1 to {MAX_VERSION} without leading zeros"
        )
    return number
