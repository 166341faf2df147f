"""The tensor signature of an ONNX graph, and whether a config.pbtxt agrees with it.

Both the exporter (before it keeps an existing config.pbtxt) and ``training.verify``
(for every version on disk) ask the same question: does this ModelConfig describe this
graph the way Triton and our server will read it? Keeping the answer in one place means
the two can never disagree about what "consistent" means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from model_repository import metadata as meta
from protos import model_config_pb2

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# ONNX element type -> Triton DataType (only the types a config can name).
_ONNX_TO_TRITON = {
    onnx.TensorProto.BOOL: model_config_pb2.TYPE_BOOL,
    onnx.TensorProto.UINT8: model_config_pb2.TYPE_UINT8,
    onnx.TensorProto.UINT16: model_config_pb2.TYPE_UINT16,
    onnx.TensorProto.UINT32: model_config_pb2.TYPE_UINT32,
    onnx.TensorProto.UINT64: model_config_pb2.TYPE_UINT64,
    onnx.TensorProto.INT8: model_config_pb2.TYPE_INT8,
    onnx.TensorProto.INT16: model_config_pb2.TYPE_INT16,
    onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32,
    onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64,
    onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
    onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
    onnx.TensorProto.DOUBLE: model_config_pb2.TYPE_FP64,
    onnx.TensorProto.STRING: model_config_pb2.TYPE_STRING,
    onnx.TensorProto.BFLOAT16: model_config_pb2.TYPE_BF16,
}


def output_names(classify: bool) -> tuple[str, ...]:
    """The outputs every exported graph has: logits and probabilities, or a prediction."""
    if classify:
        return (meta.LOGITS_NAME, meta.PROBABILITIES_NAME)
    return (meta.PREDICTION_NAME,)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as a config.pbtxt entry describes it."""

    name: str
    data_type: int  # model_config_pb2.DataType value; TYPE_INVALID when unmappable
    dims: tuple[int, ...]  # without the batch dimension when batched; -1 = dynamic

    def describe(self) -> str:
        dtype = model_config_pb2.DataType.Name(self.data_type)
        return f"'{self.name}' {dtype} {list(self.dims)}"


@dataclass(frozen=True)
class GraphSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # True when the first dimension of every input and output is symbolic, which is
    # what Triton requires for max_batch_size > 0.
    batched: bool


def _shape(value: onnx.ValueInfoProto) -> list[int | None]:
    """Dimensions of a graph value; None for a symbolic or unknown dimension."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return []
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]


def signature_from_onnx(model: onnx.ModelProto) -> GraphSignature:
    """Read names, data types and shapes of a graph's real inputs and outputs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    values = [*inputs, *model.graph.output]
    shapes = [_shape(value) for value in values]
    batched = bool(values) and all(shape and shape[0] is None for shape in shapes)

    def spec(value: onnx.ValueInfoProto, shape: list[int | None]) -> TensorSpec:
        elem_type = value.type.tensor_type.elem_type
        dims = shape[1:] if batched else shape
        return TensorSpec(
            name=value.name,
            data_type=_ONNX_TO_TRITON.get(elem_type, model_config_pb2.TYPE_INVALID),
            dims=tuple(-1 if dim is None else dim for dim in dims),
        )

    specs = [spec(value, shape) for value, shape in zip(values, shapes, strict=True)]
    return GraphSignature(
        inputs=tuple(specs[: len(inputs)]), outputs=tuple(specs[len(inputs) :]), batched=batched
    )


def _compare_tensors(
    kind: str,
    declared: list[TensorSpec],
    actual: tuple[TensorSpec, ...],
) -> list[str]:
    problems = []
    by_name = {spec.name: spec for spec in actual}
    declared_names = {spec.name for spec in declared}
    for spec in declared:
        graph_spec = by_name.get(spec.name)
        if graph_spec is None:
            problems.append(
                f"config {kind} '{spec.name}' is not in the graph (graph has {sorted(by_name)})"
            )
            continue
        same_dims = len(spec.dims) == len(graph_spec.dims) and all(
            want in (-1, have) for want, have in zip(spec.dims, graph_spec.dims, strict=True)
        )
        if spec.data_type != graph_spec.data_type or not same_dims:
            problems.append(
                f"config {kind} {spec.describe()} but the graph has {graph_spec.describe()}"
            )
    for name in sorted(set(by_name) - declared_names):
        problems.append(f"graph {kind} '{name}' is missing from the config")
    return problems


def _declared(
    entries: Iterable[model_config_pb2.ModelInput | model_config_pb2.ModelOutput],
) -> list[TensorSpec]:
    return [TensorSpec(entry.name, entry.data_type, tuple(entry.dims)) for entry in entries]


def config_mismatches(
    config: model_config_pb2.ModelConfig, signature: GraphSignature, name: str
) -> list[str]:
    """Every way ``config`` disagrees with the graph; empty when Triton would accept both.

    ``name`` is the model directory name, which Triton requires ``config.name`` to equal.
    """
    problems = []
    if config.name != name:
        problems.append(f"config name is '{config.name}', expected the directory name '{name}'")
    if config.platform != PLATFORM and config.backend != BACKEND:
        problems.append(
            f"config platform is '{config.platform}' (backend '{config.backend}'), "
            f"expected platform '{PLATFORM}'"
        )
    if config.max_batch_size < 0:
        problems.append(f"config max_batch_size is {config.max_batch_size}, expected >= 0")
    elif config.max_batch_size > 0 and not signature.batched:
        problems.append(
            f"config max_batch_size is {config.max_batch_size} but the graph has no dynamic "
            "batch dimension (max_batch_size must then be 0)"
        )
    elif config.max_batch_size == 0 and signature.batched:
        problems.append(
            "config max_batch_size is 0 but the graph has a dynamic batch dimension "
            "(set max_batch_size > 0 so dims exclude it)"
        )
    problems += _compare_tensors("input", _declared(config.input), signature.inputs)
    problems += _compare_tensors("output", _declared(config.output), signature.outputs)
    for entry in config.input:
        if entry.format != model_config_pb2.ModelInput.FORMAT_NONE and len(entry.dims) != 3:
            layout = model_config_pb2.ModelInput.Format.Name(entry.format)
            problems.append(
                f"config input '{entry.name}' has format {layout} but dims {list(entry.dims)}, "
                "expected 3 image dims"
            )
    return problems
