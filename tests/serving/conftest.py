"""Fixtures for the serving tests (helpers live in serving_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_support import ServerProcess, build_repository


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared, read-only test repository (tests that change it copy it first)."""
    return build_repository(tmp_path_factory.mktemp("serving") / "models")


@pytest.fixture(scope="session")
def server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server for every test that does not change the repository or stop the server."""
    process = ServerProcess(model_repository)
    process.start(tmp_path_factory.mktemp("server-logs"))
    yield process
    code = process.stop()
    assert code == 0, process.log()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory for a dedicated server (stopped at the end of the test)."""
    started: list[ServerProcess] = []

    def start(repository: Path, *args: str, **kwargs) -> ServerProcess:
        tls_ca = kwargs.pop("tls_ca", None)
        process = ServerProcess(repository, list(args), **kwargs)
        started.append(process)
        process.start(tmp_path, tls_ca=tls_ca)
        return process

    yield start
    for process in started:
        process.stop()
