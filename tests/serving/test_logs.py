"""One-line structured logs in both formats."""

from __future__ import annotations

import json
import logging

from serving.logs import JsonFormatter, KeyValueFormatter


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("serving.repository", logging.INFO, __file__, 1, message, args, None)


def test_text_lines_are_key_value_pairs():
    line = KeyValueFormatter().format(record("event=model_loaded model=%s version=%d", "mlp", 2))
    assert line.startswith("ts=") and "\n" not in line
    assert line.endswith(
        "level=info logger=serving.repository event=model_loaded model=mlp version=2"
    )


def test_json_lines_turn_pairs_into_fields():
    message = 'event=model_load_failed model=mlp version=3 error="bad file: truncated" extra words'
    entry = json.loads(JsonFormatter().format(record(message)))
    assert entry["level"] == "info" and entry["logger"] == "serving.repository"
    assert entry["event"] == "model_load_failed" and entry["version"] == "3"
    assert entry["error"] == "bad file: truncated"
    assert entry["msg"] == "extra words"
