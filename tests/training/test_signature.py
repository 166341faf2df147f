"""The repository contract check: a graph's signature, and every way a config can disagree.

Graphs are built with onnx.helper (no exporter), so these run in milliseconds; they are
the tests ``make mutate`` runs against training/signature.py.
"""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from training.signature import (
    GraphSignature,
    TensorSpec,
    config_mismatches,
    output_names,
    signature_from_onnx,
)

from protos import model_config_pb2 as mc

F = TensorProto.FLOAT


def graph(
    inputs: list[tuple[str, int, list]],
    outputs: list[tuple[str, int, list | None]],
    initializers: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """A model whose graph only declares values (signature reading needs no nodes)."""
    values = [
        helper.make_tensor_value_info(n, t, s)
        for n, t, s in inputs + [(i, F, [1]) for i in initializers]
    ]
    outs = [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs]
    inits = [helper.make_tensor(i, F, [1], [0.0]) for i in initializers]
    return helper.make_model(helper.make_graph([], "g", values, outs, inits))


def classifier() -> onnx.ModelProto:
    return graph(
        [("input", F, ["batch", 1, 8, 8])],
        [("logits", F, ["batch", 10]), ("probabilities", F, ["batch", 10])],
    )


def config(**fields) -> mc.ModelConfig:
    """The config the exporter writes for classifier(), with ``fields`` changed."""
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=64)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=[1, 8, 8])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[10])
    cfg.output.add(name="probabilities", data_type=mc.TYPE_FP32, dims=[10])
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def problems(cfg: mc.ModelConfig, model: onnx.ModelProto | None = None) -> list[str]:
    return config_mismatches(cfg, signature_from_onnx(model or classifier()), "mlp")


def test_output_names_of_classifiers_and_regressions() -> None:
    assert output_names(True) == ("logits", "probabilities")
    assert output_names(False) == ("prediction",)


def test_batched_signature_drops_the_batch_dimension() -> None:
    signature = signature_from_onnx(classifier())
    assert signature == GraphSignature(
        inputs=(TensorSpec("input", mc.TYPE_FP32, (1, 8, 8)),),
        outputs=(
            TensorSpec("logits", mc.TYPE_FP32, (10,)),
            TensorSpec("probabilities", mc.TYPE_FP32, (10,)),
        ),
        batched=True,
    )


def test_a_fixed_first_dimension_anywhere_makes_the_graph_unbatched() -> None:
    model = graph([("x", F, ["n", 4])], [("y", F, [3, "m"])])
    signature = signature_from_onnx(model)
    assert signature.batched is False
    assert signature.inputs == (TensorSpec("x", mc.TYPE_FP32, (-1, 4)),)
    assert signature.outputs == (TensorSpec("y", mc.TYPE_FP32, (3, -1)),)


def test_initializers_listed_as_inputs_are_not_inputs_and_types_map_to_triton() -> None:
    model = graph(
        [("ids", TensorProto.INT64, ["b", 2]), ("mask", TensorProto.BOOL, ["b", 2])],
        [("out", TensorProto.DOUBLE, ["b"]), ("odd", TensorProto.COMPLEX64, ["b", 1])],
        initializers=("weight",),
    )
    signature = signature_from_onnx(model)
    assert signature.batched is True
    assert [s.name for s in signature.inputs] == ["ids", "mask"]
    assert [s.data_type for s in signature.inputs] == [mc.TYPE_INT64, mc.TYPE_BOOL]
    assert signature.outputs == (
        TensorSpec("out", mc.TYPE_FP64, ()),
        TensorSpec("odd", mc.TYPE_INVALID, (1,)),
    )


def test_values_without_a_shape_and_empty_graphs_are_unbatched() -> None:
    shapeless = graph([("x", F, None)], [("y", F, ["b"])])
    signature = signature_from_onnx(shapeless)
    assert signature.batched is False
    assert signature.inputs == (TensorSpec("x", mc.TYPE_FP32, ()),)
    assert signature.outputs == (TensorSpec("y", mc.TYPE_FP32, (-1,)),)
    assert signature_from_onnx(graph([], [])) == GraphSignature((), (), batched=False)


def test_describe_names_type_and_dims() -> None:
    assert TensorSpec("input", mc.TYPE_FP32, (1, -1)).describe() == "'input' TYPE_FP32 [1, -1]"


def test_the_exported_config_agrees_with_its_graph() -> None:
    assert problems(config()) == []
    assert problems(config(platform="", backend="onnxruntime")) == []  # backend alone is fine


def test_name_platform_and_batch_size_disagreements_are_each_reported() -> None:
    assert problems(config(name="other")) == [
        "config name is 'other', expected the directory name 'mlp'"
    ]
    assert problems(config(platform="pytorch_libtorch", backend="pytorch")) == [
        "config platform is 'pytorch_libtorch' (backend 'pytorch'), "
        "expected platform 'onnxruntime_onnx'"
    ]
    assert problems(config(max_batch_size=-1)) == ["config max_batch_size is -1, expected >= 0"]
    assert problems(config(max_batch_size=0)) == [
        "config max_batch_size is 0 but the graph has a dynamic batch dimension "
        "(set max_batch_size > 0 so dims exclude it)"
    ]


def test_max_batch_size_must_be_zero_for_an_unbatched_graph() -> None:
    model = graph([("input", F, [2, 4])], [("prediction", F, [2, 1])])
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=1)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=[2, 4])
    cfg.output.add(name="prediction", data_type=mc.TYPE_FP32, dims=[2, 1])
    assert problems(cfg, model) == [
        "config max_batch_size is 1 but the graph has no dynamic batch dimension "
        "(max_batch_size must then be 0)"
    ]
    cfg.max_batch_size = 0
    assert problems(cfg, model) == []


def test_tensor_disagreements_name_both_sides() -> None:
    cfg = config()
    cfg.input[0].dims[:] = [1, 8, 7]
    cfg.output[0].data_type = mc.TYPE_FP64
    cfg.output[1].name = "scores"
    assert problems(cfg) == [
        "config input 'input' TYPE_FP32 [1, 8, 7] but the graph has 'input' TYPE_FP32 [1, 8, 8]",
        "config output 'logits' TYPE_FP64 [10] but the graph has 'logits' TYPE_FP32 [10]",
        "config output 'scores' is not in the graph (graph has ['logits', 'probabilities'])",
        "graph output 'probabilities' is missing from the config",
    ]


def test_every_config_tensor_is_checked_after_one_that_is_not_in_the_graph() -> None:
    cfg = config()
    del cfg.output[:]
    cfg.output.add(name="scores", data_type=mc.TYPE_FP32, dims=[10])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[11])
    cfg.output.add(name="probabilities", data_type=mc.TYPE_FP32, dims=[10])
    assert problems(cfg) == [
        "config output 'scores' is not in the graph (graph has ['logits', 'probabilities'])",
        "config output 'logits' TYPE_FP32 [11] but the graph has 'logits' TYPE_FP32 [10]",
    ]


def test_dims_may_be_dynamic_in_the_config_but_not_of_another_rank() -> None:
    cfg = config()
    cfg.input[0].dims[:] = [-1, 8, -1]
    assert problems(cfg) == []
    cfg.input[0].dims[:] = [1, 8]
    assert problems(cfg) == [
        "config input 'input' TYPE_FP32 [1, 8] but the graph has 'input' TYPE_FP32 [1, 8, 8]"
    ]
    cfg.input[0].dims[:] = [1, 8, 8, 1]
    assert len(problems(cfg)) == 1


def test_a_graph_input_missing_from_the_config_is_reported() -> None:
    cfg = config()
    del cfg.input[:]
    assert problems(cfg) == ["graph input 'input' is missing from the config"]


@pytest.mark.parametrize(
    ("layout", "dims", "expected"),
    [
        (mc.ModelInput.FORMAT_NCHW, [1, 8, 8], []),
        (mc.ModelInput.FORMAT_NONE, [1, 8, 8], []),
        (
            mc.ModelInput.FORMAT_NHWC,
            [64],
            ["config input 'input' has format FORMAT_NHWC but dims [64], expected 3 image dims"],
        ),
    ],
)
def test_an_image_format_needs_three_dims(layout: int, dims: list[int], expected) -> None:
    model = graph(
        [("input", F, ["b", *dims])],
        [("logits", F, ["b", 10]), ("probabilities", F, ["b", 10])],
    )
    cfg = config()
    cfg.input[0].dims[:] = dims
    cfg.input[0].format = layout
    assert problems(cfg, model) == expected
