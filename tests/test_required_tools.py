"""A missing external program skips on a laptop and fails under CI=true."""

from __future__ import annotations

import pytest
from required_tools import require_tool

MISSING = "d2lserve-no-such-program"


def test_a_present_program_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_tool("sh", "coreutils").endswith("/sh")


def test_a_missing_program_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"'{MISSING}' not on PATH"):
        require_tool(MISSING, "apt-get install it")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_a_missing_program_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true, so a missing tool fails"):
        require_tool(MISSING, "apt-get install it")
