"""One-line structured logs: ``key=value`` text or JSON, one event per line.

Library code logs messages that are already ``event=... key=value`` pairs (with lazy
``%`` arguments); this module only adds the timestamp, level and logger in front.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    """``ts=2026-01-01T00:00:00.123Z level=info logger=serving.server event=...``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = "" if worker is None else f"worker={worker} "

    def format(self, record: logging.LogRecord) -> str:
        line = f"ts={_timestamp(record)} level={record.levelname.lower()} logger={record.name} "
        line += self._worker + record.getMessage()
        if record.exc_info:
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs of the message become fields."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        entry.update(_pairs(record.getMessage()))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _pairs(message: str) -> dict[str, str]:
    """Split ``a=1 b="two words"`` into fields; text that is not a pair goes to ``msg``."""
    fields: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(message):
        if message[i] == " ":
            i += 1
            continue
        end = message.find(" ", i)
        end = len(message) if end < 0 else end
        token = message[i:end]
        key, sep, value = token.partition("=")
        if sep and value.startswith('"') and not (len(value) > 1 and value.endswith('"')):
            close = message.find('"', i + len(key) + 2)
            end = len(message) if close < 0 else close + 1
            value = message[i + len(key) + 1 : end]
        if sep and key.isidentifier():
            fields[key] = value.strip('"')
        else:
            rest.append(token)
        i = end
    if rest:
        fields["msg"] = " ".join(rest)
    return fields


# grpc.aio's logger, and the record it writes (ERROR, with a traceback) when the core refuses
# to send on a call whose client has gone: a client cancelling a stream is normal.
GRPC_AIO_LOGGER = "grpc._cython.cygrpc"
_CLIENT_GONE_PREFIX = "ExecuteBatchError raised in core"


class ClientGoneFilter(logging.Filter):
    """Turns grpc.aio's ERROR + traceback for a client that went away into one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_CLIENT_GONE_PREFIX):
            return True
        logger = logging.getLogger("serving.grpc_api.guard")
        if logger.isEnabledFor(logging.DEBUG):
            method = record.args[0] if isinstance(record.args, tuple) and record.args else ""
            logger.debug("event=client_gone method=%s", method)
        return False


def configure_logging(level: str = "info", fmt: str = "text", worker: int | None = None) -> None:
    """Send every log record to stderr in the chosen format, replacing other handlers.

    ``worker``: the index of a ``--workers N`` worker, added to each line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else KeyValueFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    grpc_logger = logging.getLogger(GRPC_AIO_LOGGER)
    if not any(isinstance(f, ClientGoneFilter) for f in grpc_logger.filters):
        grpc_logger.addFilter(ClientGoneFilter())


def bound_ports(log_text: str) -> tuple[int | None, int | None]:
    """The gRPC and metrics ports a server logged once listening (None: not logged yet).

    For launchers that start ``python -m serving --grpc-port 0 --metrics-port 0`` and need
    the ports the kernel chose: the server logs ``event=listening address=HOST:PORT`` and
    ``event=metrics_listening port=N`` (text or JSON format) before it reports SERVING.
    """
    grpc_port = metrics_port = None
    for line in log_text.splitlines():
        line = line.strip()
        fields: dict[str, object] = {}
        if line.startswith("{"):
            try:
                fields = json.loads(line)
            except ValueError:
                continue
        elif "event=" in line:
            fields = _pairs(line)
        if not isinstance(fields, dict):
            continue
        event = fields.get("event")
        if event == "listening":
            grpc_port = int(str(fields["address"]).rsplit(":", 1)[1])
        elif event == "metrics_listening":
            metrics_port = int(str(fields["port"]))
    return grpc_port, metrics_port
