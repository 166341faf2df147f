"""The command line: flags map onto the settings; bad input exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.__main__ import settings_from_args
from serving.config import AUTH_TOKEN_ENV
from serving.errors import SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_flags_become_settings(tmp_path, monkeypatch):
    monkeypatch.setenv(AUTH_TOKEN_ENV, "from-env")
    settings = settings_from_args(
        [
            "--model-repository", str(tmp_path),
            "--grpc-port", "9001", "--no-metrics", "--no-batching",
            "--max-queue-delay-us", "100", "--preferred-batch-size", "8,16",
            "--instances", "2", "--max-queue-size", "10", "--intra-op-threads", "2",
        ]
    )  # fmt: skip
    assert settings.grpc_port == 9001 and not settings.metrics_enabled
    assert settings.auth_token == "from-env"
    assert "from-env" not in repr(settings)  # never logged by accident
    batching = settings.batching
    assert not batching.enabled and batching.max_queue_delay_microseconds == 100
    assert batching.preferred_batch_sizes == (8, 16) and batching.instances == 2
    assert batching.max_queue_size == 10 and settings.runtime.intra_op_threads == 2


def test_flag_token_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(AUTH_TOKEN_ENV, "from-env")
    args = ["--model-repository", str(tmp_path), "--auth-token", "flag"]
    assert settings_from_args(args).auth_token == "flag"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-repository", "/no/such/dir"], "is not a directory"),
        (["--tls-cert", "cert.pem"], "TLS needs both --tls-cert and --tls-key"),
        (["--grpc-port", "70000"], "grpc_port must be in 0..65535, got 70000"),
        (["--instances", "0"], "instances must be >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused(tmp_path, args, message):
    full = ["--model-repository", str(tmp_path), *args]
    with pytest.raises(SettingsError, match=message):
        settings_from_args(full)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exits_2_with_one_line_on_bad_arguments(tmp_path):
    missing = run_cli("--model-repository", str(tmp_path / "missing"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "is not a directory" in missing.stderr
    unknown = run_cli("--model-repository", str(tmp_path), "--bogus")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().count("\n") == 0


def test_cli_exits_2_when_the_port_is_taken(server, model_repository):
    taken = run_cli(
        "--model-repository", str(model_repository), "--grpc-port", str(server.port), "--no-metrics"
    )  # fmt: skip
    assert taken.returncode == 2
    assert f"cannot listen on 127.0.0.1:{server.port}" in taken.stderr
