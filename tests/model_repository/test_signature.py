"""The repository contract: a graph's signature, every way a config can disagree, auto-complete.

Graphs are built with onnx.helper and opened with ONNX Runtime (no exporter), so these run
in milliseconds; they are the tests ``make mutate`` runs against model_repository/signature.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_repository.datatypes import BY_WIRE
from model_repository.metadata import output_names
from model_repository.signature import (
    DEFAULT_MAX_BATCH_SIZE,
    GraphSignature,
    TensorSpec,
    complete_config,
    config_mismatches,
    ort_type_name,
    signature_from_session,
)
from protos import model_config_pb2 as mc

F = TensorProto.FLOAT
Shape = list[int | str | None] | None


def model(
    inputs: list[tuple[str, int, Shape]],
    outputs: list[tuple[str, int, Shape]],
    initializers: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """A graph whose outputs are the first input reshaped and cast to each declared output.

    Reshape's target is the declared shape with -1 for the (one) free dimension, so ONNX
    shape inference agrees with the declaration; the graph is never run.
    """
    source = inputs[0][0]
    nodes, inits = [], []
    for name, elem_type, shape in outputs:
        produced = f"{name}_reshaped"
        if shape is None:
            nodes.append(helper.make_node("Identity", [source], [produced]))
        else:
            target = [d if isinstance(d, int) else -1 for d in shape]
            inits.append(numpy_helper.from_array(np.array(target, np.int64), f"{name}_shape"))
            nodes.append(helper.make_node("Reshape", [source, f"{name}_shape"], [produced]))
        nodes.append(helper.make_node("Cast", [produced], [name], to=elem_type))
    values = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    for extra in initializers:  # listed as graph inputs too (IR >= 4 allows it)
        values.append(helper.make_tensor_value_info(extra, F, [1]))
        inits.append(helper.make_tensor(extra, F, [1], [0.0]))
        nodes.append(helper.make_node("Identity", [extra], [f"{extra}_used"]))
    outs = [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs]
    graph = helper.make_graph(nodes, "g", values, outs, inits)
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    built.ir_version = 8
    return built


def session(built: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])


def signature_of(built: onnx.ModelProto) -> GraphSignature:
    return signature_from_session(session(built))


def classifier() -> onnx.ModelProto:
    return model(
        [("input", F, ["batch", 1, 8, 8])],
        [("logits", F, ["batch", 10]), ("probabilities", F, ["batch", 10])],
    )


def fixed() -> onnx.ModelProto:
    """A graph without a batch dimension: fixed first dimensions."""
    return model([("input", F, [2, 4])], [("prediction", F, [2, 1])])


def config(**fields) -> mc.ModelConfig:
    """The config the exporter writes for classifier(), with ``fields`` changed."""
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=64)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=[1, 8, 8])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[10])
    cfg.output.add(name="probabilities", data_type=mc.TYPE_FP32, dims=[10])
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def problems(cfg: mc.ModelConfig, built: onnx.ModelProto | None = None) -> list[str]:
    return config_mismatches(cfg, signature_of(built or classifier()), "mlp")


# -- output names -----------------------------------------------------------------------


def test_output_names_of_classifiers_and_regressions() -> None:
    assert output_names("classification") == ("logits", "probabilities")
    assert output_names("regression") == ("prediction",)


# -- reading the signature --------------------------------------------------------------


def test_signature_holds_full_shapes_with_dynamic_dims_as_minus_one() -> None:
    signature = signature_of(classifier())
    assert signature == GraphSignature(
        inputs=(TensorSpec("input", mc.TYPE_FP32, (-1, 1, 8, 8)),),
        outputs=(
            TensorSpec("logits", mc.TYPE_FP32, (-1, 10)),
            TensorSpec("probabilities", mc.TYPE_FP32, (-1, 10)),
        ),
    )
    assert signature.batchable is True


def test_config_specs_drop_the_batch_dimension_only_when_batched() -> None:
    signature = signature_of(classifier())
    inputs, outputs = signature.config_specs(batched=True)
    assert inputs == (TensorSpec("input", mc.TYPE_FP32, (1, 8, 8)),)
    assert outputs == (
        TensorSpec("logits", mc.TYPE_FP32, (10,)),
        TensorSpec("probabilities", mc.TYPE_FP32, (10,)),
    )
    assert signature.config_specs(batched=False) == (signature.inputs, signature.outputs)


def test_a_fixed_first_dimension_anywhere_makes_the_graph_unbatchable() -> None:
    signature = signature_of(model([("x", F, ["n", 4])], [("y", F, [3, "m"])]))
    assert signature.batchable is False
    assert signature.inputs == (TensorSpec("x", mc.TYPE_FP32, (-1, 4)),)
    assert signature.outputs == (TensorSpec("y", mc.TYPE_FP32, (3, -1)),)
    fixed_input = model([("x", F, [2, 4])], [("y", F, ["n", 8])])
    assert signature_of(fixed_input).batchable is False


def test_scalars_and_empty_signatures_are_unbatchable() -> None:
    scalar = TensorSpec("s", mc.TYPE_FP32, ())
    dynamic = TensorSpec("d", mc.TYPE_FP32, (-1, 3))
    assert GraphSignature((dynamic,), (scalar,)).batchable is False
    assert GraphSignature((scalar,), (dynamic,)).batchable is False
    assert GraphSignature((dynamic,), (dynamic,)).batchable is True
    assert GraphSignature((), ()).batchable is False
    assert GraphSignature((dynamic,), ()).batchable is True


def test_initializers_listed_as_inputs_are_not_inputs_and_types_map_to_triton() -> None:
    built = model(
        [("ids", TensorProto.INT64, ["b", 2]), ("mask", TensorProto.BOOL, ["b", 2])],
        [
            ("out", TensorProto.DOUBLE, ["b"]),
            ("half", TensorProto.FLOAT16, ["b", 2]),
            ("text", TensorProto.STRING, ["b", 2]),
            ("small", TensorProto.UINT8, ["b", 2]),
        ],
        initializers=("weight",),
    )
    signature = signature_of(built)
    assert signature.batchable is True
    assert signature.inputs == (
        TensorSpec("ids", mc.TYPE_INT64, (-1, 2)),
        TensorSpec("mask", mc.TYPE_BOOL, (-1, 2)),
    )
    assert [(s.name, s.data_type) for s in signature.outputs] == [
        ("out", mc.TYPE_FP64),
        ("half", mc.TYPE_FP16),
        ("text", mc.TYPE_STRING),
        ("small", mc.TYPE_UINT8),
    ]
    assert signature.outputs[2].datatype is BY_WIRE["BYTES"]


def test_a_type_no_wire_type_holds_is_invalid_and_ort_names_it() -> None:
    built = model([("x", F, ["b", 2])], [("y", TensorProto.BFLOAT16, ["b", 2])])
    opened = session(built)
    spec = signature_from_session(opened).outputs[0]
    assert spec == TensorSpec("y", mc.TYPE_INVALID, (-1, 2))
    assert spec.datatype is None
    assert ort_type_name(opened, "y") == "tensor(bfloat16)"
    assert ort_type_name(opened, "x") == "tensor(float)"
    assert ort_type_name(opened, "nope") == "unknown"


def test_a_zero_sized_dimension_is_kept_not_made_free() -> None:
    signature = signature_of(model([("x", F, [2, 0])], [("y", F, [2, 0])]))
    assert signature.inputs == (TensorSpec("x", mc.TYPE_FP32, (2, 0)),)
    assert signature.outputs == (TensorSpec("y", mc.TYPE_FP32, (2, 0)),)


def test_unnamed_free_and_missing_shapes() -> None:
    built = model([("x", F, [None, 3])], [("y", F, ["b", 3])])
    assert signature_of(built).inputs == (TensorSpec("x", mc.TYPE_FP32, (-1, 3)),)
    shapeless = model([("x", F, None)], [("y", F, None)])
    signature = signature_of(shapeless)
    assert signature.inputs == (TensorSpec("x", mc.TYPE_FP32, ()),)
    assert signature.batchable is False


def test_describe_names_type_and_dims_and_datatype_reads_the_table() -> None:
    spec = TensorSpec("input", mc.TYPE_FP32, (1, -1))
    assert spec.describe() == "'input' TYPE_FP32 [1, -1]"
    assert spec.datatype is BY_WIRE["FP32"]


# -- config_mismatches ------------------------------------------------------------------


def test_the_exported_config_agrees_with_its_graph() -> None:
    assert problems(config()) == []
    assert problems(config(platform="", backend="onnxruntime")) == []  # backend alone is fine
    assert problems(config(platform="onnxruntime_onnx", backend="other")) == []
    cfg = config()
    cfg.dynamic_batching.max_queue_delay_microseconds = 100
    assert problems(cfg) == []


def test_name_and_platform_disagreements_are_each_reported() -> None:
    assert problems(config(name="other")) == ["config name is 'other'; the directory name is 'mlp'"]
    assert problems(config(platform="pytorch_libtorch", backend="pytorch")) == [
        "config platform is 'pytorch_libtorch' (backend 'pytorch'); this server runs "
        "platform 'onnxruntime_onnx' / backend 'onnxruntime'"
    ]
    assert problems(config(platform="")) == [
        "config platform is '' (backend ''); this server runs "
        "platform 'onnxruntime_onnx' / backend 'onnxruntime'"
    ]


@pytest.mark.parametrize("scheduler", ["sequence_batching", "ensemble_scheduling"])
def test_unsupported_schedulers_are_refused(scheduler: str) -> None:
    cfg = config()
    getattr(cfg, scheduler).SetInParent()
    assert problems(cfg) == [f"config uses {scheduler}, which this server does not support"]


def test_batch_inputs_and_outputs_are_refused() -> None:
    cfg = config()
    cfg.batch_input.add(target_name=["x"])
    assert problems(cfg) == ["config uses batch_input, which this server does not support"]
    cfg.batch_output.add(target_name=["y"])
    assert problems(cfg) == [
        "config uses batch_input, which this server does not support",
        "config uses batch_output, which this server does not support",
    ]


def test_a_negative_max_batch_size_is_refused_and_dims_are_then_read_as_full_shapes() -> None:
    assert problems(config(max_batch_size=-1)) == [
        "config max_batch_size is -1; expected >= 0",
        "config input 'input' dims are [1, 8, 8]; the graph has [-1, 1, 8, 8]",
        "config output 'logits' dims are [10]; the graph has [-1, 10]",
        "config output 'probabilities' dims are [10]; the graph has [-1, 10]",
    ]


def test_batching_a_graph_without_a_batch_dimension_is_refused_before_tensors() -> None:
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=1)
    cfg.input.add(name="wrong", data_type=mc.TYPE_FP64, dims=[9])  # not even looked at
    assert problems(cfg, fixed()) == [
        "config max_batch_size is 1, but not every graph tensor has a dynamic first (batch) "
        "dimension: {'input': [2, 4], 'prediction': [2, 1]}; use max_batch_size: 0"
    ]


def test_max_batch_size_zero_means_dims_are_the_full_shapes() -> None:
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=0)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=[2, 4])
    cfg.output.add(name="prediction", data_type=mc.TYPE_FP32, dims=[2, 1])
    assert problems(cfg, fixed()) == []
    # On a graph that could batch, 0 is allowed too (Triton): dims then include the batch one.
    full = config(max_batch_size=0)
    full.input[0].dims[:] = [-1, 1, 8, 8]
    del full.output[:]
    full.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[5, 10])  # pins the batch
    assert problems(full) == []
    assert problems(config(max_batch_size=0)) == [
        "config input 'input' dims are [1, 8, 8]; the graph has [-1, 1, 8, 8]",
        "config output 'logits' dims are [10]; the graph has [-1, 10]",
        "config output 'probabilities' dims are [10]; the graph has [-1, 10]",
    ]


def test_tensor_disagreements_name_both_sides() -> None:
    cfg = config()
    cfg.input[0].dims[:] = [1, 8, 7]
    cfg.output[0].data_type = mc.TYPE_FP64
    cfg.output[1].name = "scores"
    assert problems(cfg) == [
        "config input 'input' dims are [1, 8, 7]; the graph has [1, 8, 8]",
        "config output 'logits' data_type is TYPE_FP64; the graph has TYPE_FP32",
        "config output 'scores' is not in the graph (graph outputs: ['logits', 'probabilities'])",
    ]


def test_type_and_dims_are_both_reported_for_one_input() -> None:
    cfg = config()
    cfg.input[0].data_type = mc.TYPE_FP64
    cfg.input[0].dims[:] = [5]
    assert problems(cfg) == [
        "config input 'input' data_type is TYPE_FP64; the graph has TYPE_FP32",
        "config input 'input' dims are [5]; the graph has [1, 8, 8]",
    ]


def test_every_config_tensor_is_checked_after_one_that_is_not_in_the_graph() -> None:
    cfg = config()
    del cfg.output[:]
    cfg.output.add(name="scores", data_type=mc.TYPE_FP32, dims=[10])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[11])
    cfg.output.add(name="probabilities", data_type=mc.TYPE_FP32, dims=[10])
    assert problems(cfg) == [
        "config output 'scores' is not in the graph (graph outputs: ['logits', 'probabilities'])",
        "config output 'logits' dims are [11]; the graph has [10]",
    ]


def test_a_tensor_listed_twice_is_reported_once_and_not_compared_again() -> None:
    cfg = config()
    cfg.input.add(name="input", data_type=mc.TYPE_FP64, dims=[3])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[10])
    assert problems(cfg) == [
        "config input 'input' is listed twice",
        "config output 'logits' is listed twice",
    ]


def test_tensors_after_one_listed_twice_are_still_checked() -> None:
    cfg = config()
    del cfg.output[:]
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[10])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[10])
    cfg.output.add(name="scores", data_type=mc.TYPE_FP32, dims=[10])
    assert problems(cfg) == [
        "config output 'logits' is listed twice",
        "config output 'scores' is not in the graph (graph outputs: ['logits', 'probabilities'])",
    ]


def test_a_config_may_serve_a_subset_of_the_outputs_but_every_input() -> None:
    cfg = config()
    del cfg.output[1:]
    assert problems(cfg) == []
    del cfg.output[:]
    assert problems(cfg) == []
    del cfg.input[:]
    assert problems(cfg) == ["graph input 'input' is missing from the config"]


def test_missing_graph_inputs_are_listed_in_name_order() -> None:
    built = model(
        [("b", F, ["n", 2]), ("c", F, ["n", 2]), ("a", F, ["n", 2])], [("y", F, ["n", 2])]
    )
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=4)
    cfg.input.add(name="c", data_type=mc.TYPE_FP32, dims=[2])
    assert problems(cfg, built) == [
        "graph input 'a' is missing from the config",
        "graph input 'b' is missing from the config",
    ]


def test_dims_may_be_dynamic_on_either_side_but_not_of_another_rank() -> None:
    cfg = config()
    cfg.input[0].dims[:] = [-1, 8, -1]
    assert problems(cfg) == []
    cfg.input[0].dims[:] = [1, 8]
    assert problems(cfg) == ["config input 'input' dims are [1, 8]; the graph has [1, 8, 8]"]
    cfg.input[0].dims[:] = [1, 8, 8, 1]
    assert problems(cfg) == ["config input 'input' dims are [1, 8, 8, 1]; the graph has [1, 8, 8]"]
    cfg.input[0].dims[:] = []
    assert problems(cfg) == ["config input 'input' dims are []; the graph has [1, 8, 8]"]
    free = model([("input", F, ["b", "n", 8])], [("y", F, ["b", 8])])
    pinned = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=8)
    pinned.input.add(name="input", data_type=mc.TYPE_FP32, dims=[5, 8])  # pins the free one
    assert problems(pinned, free) == []
    pinned.input[0].dims[:] = [5, 9]
    assert problems(pinned, free) == ["config input 'input' dims are [5, 9]; the graph has [-1, 8]"]


def test_a_type_this_server_cannot_carry_is_refused_even_when_both_sides_agree() -> None:
    built = model([("x", F, ["b", 2])], [("y", TensorProto.BFLOAT16, ["b", 2])])
    cfg = mc.ModelConfig(name="mlp", platform="onnxruntime_onnx", max_batch_size=4)
    cfg.input.add(name="x", data_type=mc.TYPE_FP32, dims=[2])
    cfg.output.add(name="y", data_type=mc.TYPE_INVALID, dims=[2])
    assert problems(cfg, built) == [
        "output 'y' has data_type TYPE_INVALID, which this server cannot carry"
    ]
    cfg.output[0].data_type = mc.TYPE_BF16
    assert problems(cfg, built) == [
        "config output 'y' data_type is TYPE_BF16; the graph has TYPE_INVALID",
        "output 'y' has data_type TYPE_BF16, which this server cannot carry",
    ]


def test_reshape_is_refused_on_inputs_and_outputs() -> None:
    cfg = config()
    cfg.input[0].reshape.shape[:] = [64]
    cfg.output[0].reshape.shape[:] = [10]
    assert problems(cfg) == [
        "config input 'input' uses reshape, which is not supported",
        "config output 'logits' uses reshape, which is not supported",
    ]


@pytest.mark.parametrize(
    ("layout", "dims", "expected"),
    [
        (mc.ModelInput.FORMAT_NCHW, [1, 8, 8], []),
        (mc.ModelInput.FORMAT_NHWC, [8, 8, 1], []),
        (mc.ModelInput.FORMAT_NONE, [64], []),
        (
            mc.ModelInput.FORMAT_NHWC,
            [64],
            [
                "config input 'input' format is FORMAT_NHWC with dims [64]; "
                "an image format needs 3 dims"
            ],
        ),
        (
            mc.ModelInput.FORMAT_NCHW,
            [1, 1, 8, 8],
            [
                "config input 'input' format is FORMAT_NCHW with dims [1, 1, 8, 8]; "
                "an image format needs 3 dims"
            ],
        ),
    ],
)
def test_an_image_format_needs_three_dims(layout: int, dims: list[int], expected) -> None:
    built = model([("input", F, ["b", *dims])], [("logits", F, ["b", 10])])
    cfg = config()
    del cfg.output[1:]
    cfg.input[0].dims[:] = dims
    cfg.input[0].format = layout
    assert problems(cfg, built) == expected


# -- complete_config --------------------------------------------------------------------


def test_no_config_on_a_batchable_graph_gets_batching_and_every_tensor() -> None:
    signature = signature_of(classifier())
    completed = complete_config(None, signature, "mlp")
    expected = config(max_batch_size=DEFAULT_MAX_BATCH_SIZE)
    expected.dynamic_batching.SetInParent()
    expected.version_policy.latest.num_versions = 1
    expected.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    assert completed == expected
    assert DEFAULT_MAX_BATCH_SIZE == 4
    assert config_mismatches(completed, signature, "mlp") == []


def test_no_config_on_a_fixed_graph_gets_full_shapes_and_no_batching() -> None:
    signature = signature_of(fixed())
    completed = complete_config(None, signature, "reg", mc.ModelInstanceGroup.KIND_GPU)
    expected = mc.ModelConfig(name="reg", platform="onnxruntime_onnx", max_batch_size=0)
    expected.input.add(name="input", data_type=mc.TYPE_FP32, dims=[2, 4])
    expected.output.add(name="prediction", data_type=mc.TYPE_FP32, dims=[2, 1])
    expected.version_policy.latest.num_versions = 1
    expected.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
    assert completed == expected
    assert not completed.HasField("dynamic_batching")
    assert config_mismatches(completed, signature, "reg") == []


def test_a_config_that_states_nothing_is_completed_like_no_config() -> None:
    signature = signature_of(classifier())
    given = mc.ModelConfig()
    given.dynamic_batching.max_queue_delay_microseconds = 250
    completed = complete_config(given, signature, "mlp")
    assert completed.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert completed.dynamic_batching.max_queue_delay_microseconds == 250  # kept
    assert [i.name for i in completed.input] == ["input"]
    assert list(completed.input[0].dims) == [1, 8, 8]
    assert given == mc.ModelConfig(dynamic_batching={"max_queue_delay_microseconds": 250})


def test_what_a_config_says_is_kept() -> None:
    signature = signature_of(classifier())
    given = mc.ModelConfig(name="given", backend="onnxruntime", max_batch_size=8)
    given.version_policy.all.SetInParent()
    given.instance_group.add(count=3, kind=mc.ModelInstanceGroup.KIND_CPU)
    given.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[10])
    completed = complete_config(given, signature, "mlp")
    assert (completed.name, completed.platform, completed.backend) == ("given", "", "onnxruntime")
    assert completed.max_batch_size == 8
    assert not completed.HasField("dynamic_batching")  # stated a batch size: no scheduler added
    assert completed.version_policy.WhichOneof("policy_choice") == "all"
    assert [(g.count, g.kind) for g in completed.instance_group] == [
        (3, mc.ModelInstanceGroup.KIND_CPU)
    ]
    assert [o.name for o in completed.output] == ["logits"]  # a listed subset stays a subset
    assert [(i.name, list(i.dims)) for i in completed.input] == [("input", [1, 8, 8])]


def test_a_stated_batch_size_on_a_batchable_graph_fills_stripped_dims() -> None:
    signature = signature_of(classifier())
    completed = complete_config(mc.ModelConfig(max_batch_size=16), signature, "mlp")
    assert completed.max_batch_size == 16
    one = complete_config(mc.ModelConfig(max_batch_size=1), signature, "mlp")  # still batched
    assert [(i.name, list(i.dims)) for i in one.input] == [("input", [1, 8, 8])]
    assert [(o.name, list(o.dims)) for o in completed.output] == [
        ("logits", [10]),
        ("probabilities", [10]),
    ]
    assert config_mismatches(completed, signature, "mlp") == []


def test_max_batch_size_zero_with_tensors_listed_stays_unbatched_with_full_shapes() -> None:
    signature = signature_of(classifier())
    given = mc.ModelConfig(max_batch_size=0)
    given.input.add(name="input", data_type=mc.TYPE_FP32, dims=[-1, 1, 8, 8])
    completed = complete_config(given, signature, "mlp")
    assert completed.max_batch_size == 0
    assert not completed.HasField("dynamic_batching")
    assert [(o.name, list(o.dims)) for o in completed.output] == [
        ("logits", [-1, 10]),
        ("probabilities", [-1, 10]),
    ]
    assert config_mismatches(completed, signature, "mlp") == []


def test_batching_a_fixed_graph_is_left_for_the_check_to_refuse() -> None:
    signature = signature_of(fixed())
    completed = complete_config(mc.ModelConfig(max_batch_size=8), signature, "reg")
    assert (list(completed.input), list(completed.output)) == ([], [])
    assert completed.max_batch_size == 8
    assert config_mismatches(completed, signature, "reg")[0].startswith(
        "config max_batch_size is 8, but not every graph tensor"
    )
