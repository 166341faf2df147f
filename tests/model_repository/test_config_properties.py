"""config.pbtxt parsing takes any text: a ModelConfig or our ConfigError, nothing else.

Property-based (hypothesis, derandomized in tests/conftest.py): arbitrary text, valid
configs with a few characters changed, and the round trip of configs the exporter writes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_repository.config import ConfigError, ModelConfig, format_config, parse_config
from protos import model_config_pb2 as mc

SOURCE = "models/m/config.pbtxt"


@st.composite
def configs(draw) -> ModelConfig:
    """ModelConfigs with the fields our exporter and server use."""
    config = ModelConfig(
        name=draw(st.text(max_size=12)),
        platform=draw(st.sampled_from(["onnxruntime_onnx", "", "pytorch_libtorch"])),
        max_batch_size=draw(st.integers(-(2**31), 2**31 - 1)),
    )
    if draw(st.booleans()):
        batching = config.dynamic_batching
        batching.preferred_batch_size.extend(draw(st.lists(st.integers(0, 2**31 - 1), max_size=3)))
        batching.max_queue_delay_microseconds = draw(st.integers(0, 2**64 - 1))
        batching.default_queue_policy.max_queue_size = draw(st.integers(0, 2**31 - 1))
    policy = draw(st.sampled_from(["none", "latest", "all", "specific"]))
    if policy == "latest":
        config.version_policy.latest.num_versions = draw(st.integers(0, 2**32 - 1))
    elif policy == "all":
        config.version_policy.all.SetInParent()
    elif policy == "specific":
        versions = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4))
        config.version_policy.specific.versions.extend(versions)
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(list(mc.ModelInstanceGroup.Kind.values())))
        config.instance_group.add(kind=kind, count=draw(st.integers(0, 8)))
    return config


def parse_or_config_error(text: str) -> ModelConfig | None:
    """parse_config's outcome; None when it refused with our error and a useful message."""
    try:
        return parse_config(text, SOURCE)
    except ConfigError as error:
        assert str(error).startswith(f"{SOURCE}: not a valid ModelConfig: "), str(error)
        return None


@given(configs())
def test_written_configs_parse_back_to_the_same_message(config):
    assert parse_config(format_config(config), SOURCE) == config


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_config_or_our_error(text):
    parse_or_config_error(text)


@given(configs(), st.data())
def test_edited_configs_are_a_config_or_our_error(config, data):
    text = format_config(config)
    at = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 8))
    inserted = data.draw(st.text(alphabet=st.sampled_from('{}:"\\ \n#0-9eE.x<>[],'), max_size=4))
    parse_or_config_error(text[:at] + inserted + text[at + cut :])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: 99999999999", "Value out of range: 99999999999"),
        ('name: "unterminated', "String missing ending quote"),
        ("no_such_field: 1", 'has no field named "no_such_field"'),
        ("version_policy { all {} latest { num_versions: 1 } }", "another member of oneof"),
    ],
)
def test_malformed_configs_raise_config_error_naming_the_file(text, message):
    with pytest.raises(ConfigError, match=f"^{SOURCE}: not a valid ModelConfig: .*") as caught:
        parse_config(text, SOURCE)
    assert message in str(caught.value)
