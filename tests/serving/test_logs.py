"""One-line structured logs in both formats."""

from __future__ import annotations

import json
import logging

from serving.logs import (
    GRPC_AIO_LOGGER,
    JsonFormatter,
    KeyValueFormatter,
    bound_ports,
    configure_logging,
)


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        "serving.core.repository", logging.INFO, __file__, 1, message, args, None
    )


def test_text_lines_are_key_value_pairs():
    line = KeyValueFormatter().format(record("event=model_loaded model=%s version=%d", "mlp", 2))
    assert line.startswith("ts=") and "\n" not in line
    assert line.endswith(
        "level=info logger=serving.core.repository event=model_loaded model=mlp version=2"
    )


def test_json_lines_turn_pairs_into_fields():
    message = 'event=model_load_failed model=mlp version=3 error="bad file: truncated" extra words'
    entry = json.loads(JsonFormatter().format(record(message)))
    assert entry["level"] == "info" and entry["logger"] == "serving.core.repository"
    assert entry["event"] == "model_load_failed" and entry["version"] == "3"
    assert entry["error"] == "bad file: truncated"
    assert entry["msg"] == "extra words"


def test_grpc_send_failures_of_a_departed_client_become_one_debug_line(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("debug")
    grpc_logger = logging.getLogger(GRPC_AIO_LOGGER)
    try:
        try:
            raise RuntimeError("Failed execute_batch: (SendMessageOperation,)")
        except RuntimeError:
            grpc_logger.error(
                "ExecuteBatchError raised in core by servicer method [%s]",
                "/inference.GRPCInferenceService/ModelStreamInfer",
                exc_info=True,
            )
        grpc_logger.error("Unexpected [%s] raised by servicer method [%s]", "KeyError", "/x")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "Traceback" not in lines[0]
    assert lines[0].endswith(
        "level=debug logger=serving.grpc_api.guard event=client_gone "
        "method=/inference.GRPCInferenceService/ModelStreamInfer"
    )
    assert "level=error" in lines[1]  # other grpc errors are not hidden


def test_bound_ports_are_read_from_text_and_json_logs() -> None:
    text = (
        "ts=2026-01-01T00:00:00.000Z level=info logger=serving.server event=listening "
        "address=127.0.0.1:40123 tls=False auth=False max_message_bytes=4194304\n"
        "ts=2026-01-01T00:00:00.001Z level=info logger=serving.server "
        "event=metrics_listening port=40124\n"
    )
    assert bound_ports(text) == (40123, 40124)
    json_lines = (
        '{"ts": "x", "event": "listening", "address": "0.0.0.0:8001"}\n'
        '{"ts": "x", "event": "ready", "models": "mlp"}\n'
    )
    assert bound_ports(json_lines) == (8001, None)
    assert bound_ports("event=loading\nnot a log line\n{broken") == (None, None)
