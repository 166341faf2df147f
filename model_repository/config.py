"""Read and write ``config.pbtxt`` through the ModelConfig protobuf message."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from protos import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig


class ConfigError(ValueError):
    """A config.pbtxt that cannot be parsed as a ModelConfig."""


def parse_config(text: str, source: str = "<text>") -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigError(f"{source}: not a valid ModelConfig: {error}") from error
    return config


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    return parse_config(text, str(path))


def format_config(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)
