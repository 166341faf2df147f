"""The generic-serving test models build, are valid ONNX, run in ONNX Runtime, match configs.

These checks need no server: they guard the fixtures of test_generic_models.py, so that a
failure there is the server's and not the zoo's.
"""

from __future__ import annotations

import kserve_wire as wire
import model_zoo
import numpy as np
import onnx
import pytest
from model_zoo import ZooModel
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from model_repository import layout
from model_repository.config import parse_config
from protos import model_config_pb2 as mc

NAMES = tuple(model_zoo.BUILDERS)
BATCHED = tuple(n for n in NAMES if n not in ("unbatched", "mismatch"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooModel]:
    return model_zoo.build_zoo(tmp_path_factory.mktemp("zoo") / "models")


def graph_dims(value: onnx.ValueInfoProto) -> list[int]:
    """A graph tensor's dims, -1 for symbolic ones."""
    return [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]


def triton_type(elem_type: int) -> str:
    name = onnx.TensorProto.DataType.Name(elem_type)
    return {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64"}.get(
        name, f"TYPE_{name}"
    )


def signature_from_graph(model: onnx.ModelProto, batched: bool) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton data type, dims without the batch axis when batched)."""
    return {
        v.name: (triton_type(v.type.tensor_type.elem_type), graph_dims(v)[1 if batched else 0 :])
        for v in [*model.graph.input, *model.graph.output]
    }


def signature_from_config(config: mc.ModelConfig) -> dict[str, tuple[str, list[int]]]:
    return {
        t.name: (mc.DataType.Name(t.data_type), list(t.dims))
        for t in [*config.input, *config.output]
    }


def test_every_zoo_model_is_written_in_the_triton_layout(zoo: dict[str, ZooModel]):
    assert sorted(zoo) == sorted(NAMES)
    root = zoo["resnet"].directory.parent
    assert sorted(layout.model_names(root)) == sorted(NAMES)
    for name, model in zoo.items():
        assert model.onnx_path == layout.model_path(root, name, 1)
        assert layout.config_path(root, name).is_file() == model.has_config, name
    labels = (zoo["resnet"].directory / model_zoo.LABEL_FILENAME).read_text().splitlines()
    assert labels == list(model_zoo.RESNET_LABELS) and len(labels) == 1000


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_model_passes_the_full_onnx_checker(zoo: dict[str, ZooModel], name: str):
    onnx.checker.check_model(str(zoo[name].onnx_path), full_check=True)


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_model_runs_its_samples_in_onnx_runtime(zoo: dict[str, ZooModel], name: str):
    model = zoo[name]
    rows = 2 if name == "resnet" else 3
    inputs = model.sample(rows, seed=5)
    outputs = model_zoo.reference(model.onnx_path, inputs)
    assert tuple(outputs) == model.outputs
    for array in outputs.values():
        expected_rows = array.shape[0] if model.max_batch_size == 0 else rows
        assert array.shape[0] == expected_rows
        assert array.dtype in wire.DATATYPES
    again = model_zoo.reference(model.onnx_path, model.sample(rows, seed=5))
    wire.assert_bit_equal(again, outputs)  # the samples are seeded, the runs deterministic


@pytest.mark.parametrize("name", BATCHED)
def test_rows_do_not_depend_on_their_batch_neighbours(zoo: dict[str, ZooModel], name: str):
    """What lets the end-to-end tests compare a merged request with its own reference run."""
    model = zoo[name]
    parts = [model.sample(1 if name == "resnet" else r, seed=s) for s, r in enumerate((1, 2, 3))]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    together = model_zoo.reference(model.onnx_path, merged)
    alone = [model_zoo.reference(model.onnx_path, p) for p in parts]
    wire.assert_bit_equal(together, {k: np.concatenate([a[k] for a in alone]) for k in together})


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("no_config", "mismatch")])
def test_configs_parse_and_agree_with_their_graphs(zoo: dict[str, ZooModel], name: str):
    model = zoo[name]
    config = parse_config(layout.config_path(model.directory.parent, name).read_text())
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == model.max_batch_size
    graph = onnx.load(str(model.onnx_path), load_external_data=False)
    assert signature_from_config(config) == signature_from_graph(graph, model.max_batch_size > 0)
    assert [o.name for o in config.output] == list(model.outputs)
    assert config.HasField("dynamic_batching") == (model.max_batch_size > 0)


def test_batching_zoo_configs_wait_long_enough_to_merge(zoo: dict[str, ZooModel]):
    for name in ("two_inputs", "ragged"):
        config = parse_config(layout.config_path(zoo[name].directory.parent, name).read_text())
        assert config.dynamic_batching.max_queue_delay_microseconds == model_zoo.BATCHING_DELAY_US
    resnet = parse_config(layout.config_path(zoo["resnet"].directory.parent, "resnet").read_text())
    assert resnet.output[0].label_filename == model_zoo.LABEL_FILENAME


def test_mismatch_config_disagrees_with_its_graph_only_in_the_input_dims(zoo: dict[str, ZooModel]):
    model = zoo["mismatch"]
    config = parse_config(layout.config_path(model.directory.parent, "mismatch").read_text())
    graph = onnx.load(str(model.onnx_path))
    from_config, from_graph = signature_from_config(config), signature_from_graph(graph, True)
    assert from_config["x"] == ("TYPE_FP32", model_zoo.MISMATCH_CONFIG_DIMS)
    assert from_graph["x"] == ("TYPE_FP32", model_zoo.MISMATCH_GRAPH_DIMS)
    assert from_config["y"] == from_graph["y"]


def test_no_config_graph_has_a_dynamic_first_axis_everywhere(zoo: dict[str, ZooModel]):
    graph = onnx.load(str(zoo["no_config"].onnx_path))
    for value in [*graph.graph.input, *graph.graph.output]:
        assert graph_dims(value)[0] == -1, value.name


def test_unbatched_graph_has_fixed_shapes(zoo: dict[str, ZooModel]):
    graph = onnx.load(str(zoo["unbatched"].onnx_path))
    assert [graph_dims(v) for v in graph.graph.input] == [[2, 3]]
    assert [graph_dims(v) for v in graph.graph.output] == [[3, 2]]


def test_bytes_encoding_is_tritons():
    texts = np.array([["hello"], ["héllo wörld"], [""]], dtype=object)
    ours = wire.encode_bytes(texts)
    assert ours == serialize_byte_tensor(texts).item()
    assert wire.decode_bytes(ours) == list(deserialize_bytes_tensor(ours))
    back = wire.from_raw(ours, "BYTES", [3, 1])
    assert [v.decode() for v in back.ravel()] == texts.ravel().tolist()


def test_raw_contents_round_trip_every_datatype():
    for dtype, name in wire.DATATYPES.items():
        if dtype == np.object_:
            continue
        array = (np.arange(6) % 2 == 1) if dtype == np.bool_ else np.arange(6).astype(dtype)
        array = array.reshape(2, 3)
        back = wire.from_raw(wire.raw(array), name, [2, 3])
        assert back.dtype == array.dtype and back.tobytes() == array.tobytes(), name


def test_typed_contents_carry_every_typed_datatype(zoo: dict[str, ZooModel]):
    inputs = zoo["all_ints"].sample(2)
    request = wire.infer_request("all_ints", inputs, typed=True)
    assert not request.raw_input_contents
    for tensor in request.inputs:
        field = wire.CONTENTS_FIELDS[tensor.datatype]
        values = list(getattr(tensor.contents, field))
        assert values == inputs[tensor.name].ravel().tolist(), tensor.name
