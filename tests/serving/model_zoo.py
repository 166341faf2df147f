"""Models that were not written by our exporter, for the generic-serving tests (issue 11).

Each builder writes one Triton-layout model directory into a repository root
(``<name>/config.pbtxt`` when the model has one, ``<name>/1/model.onnx``, label files beside
the config) and returns a :class:`ZooModel`. Nothing is downloaded: every graph is built
here, by ``torch.onnx.export`` or by hand with ``onnx.helper``.

==============  =====================================================================
``resnet``      torchvision resnet18(weights=None): pixels FP32 [b, 3, 224, 224] -> logits
                [b, 1000]; ``label_filename: "labels.txt"`` on the output (a classifier)
``plain_mlp``   a plain torch MLP: input [b, 64] -> logits [b, 10], no labels, no metadata
``two_inputs``  x FP32 [b, 4], k INT64 [b, 1] -> scaled FP32 [b, 4], total FP64 [b, 1]
``half_bool``   h FP16 [b, 3], mask BOOL [b, 3] -> masked FP16 [b, 3], flipped BOOL [b, 3]
``all_ints``    one [b, 2] input per integer type and FP64, each doubled (x + x)
``strings``     text STRING [b, 1] -> same STRING [b, 1], is_hello BOOL [b, 1]
``ragged``      seq FP32 [b, n] -> sum FP32 [b, 1], doubled FP32 [b, n] (n varies per request)
``no_config``   a [b, 3] graph with no config.pbtxt (the server completes the config)
``unbatched``   max_batch_size 0: m FP32 [2, 3] -> t FP32 [3, 2]
``mismatch``    config dims [5] for a graph input of [b, 4]: refused at load
==============  =====================================================================

``reference`` runs a file in a local ONNX Runtime session with the server's settings (CPU, one
intra-op and one inter-op thread), so answers can be compared bit for bit.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from model_repository import layout

Inputs = dict[str, np.ndarray]
Sampler = Callable[..., Inputs]

RESNET_CLASSES = 1000
RESNET_LABELS = tuple(f"label-{i:04d}" for i in range(RESNET_CLASSES))
LABEL_FILENAME = "labels.txt"
NO_CONFIG_MAX_BATCH_SIZE = 4  # Triton's --backend-config default-max-batch-size
BATCHING_DELAY_US = 20_000  # long, so that concurrent requests are merged
STRING_TEXTS = ("hello", "héllo wörld", "", "a longer sentence, with punctuation.", "hello ")

# ONNX element type and numpy dtype of every tensor type that ``all_ints`` carries.
INT_TYPES: dict[str, tuple[int, type[np.generic]]] = {
    "i8": (TensorProto.INT8, np.int8),
    "i16": (TensorProto.INT16, np.int16),
    "i32": (TensorProto.INT32, np.int32),
    "i64": (TensorProto.INT64, np.int64),
    "u8": (TensorProto.UINT8, np.uint8),
    "u16": (TensorProto.UINT16, np.uint16),
    "u32": (TensorProto.UINT32, np.uint32),
    "u64": (TensorProto.UINT64, np.uint64),
    "f64": (TensorProto.DOUBLE, np.float64),
}
_TRITON_TYPE = {
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.object_): "TYPE_STRING",
}


@dataclass(frozen=True)
class ZooModel:
    """One model written into a repository, and how to feed it."""

    name: str
    onnx_path: Path
    # sample(rows, seed=0) -> {input name: array}; rows is ignored by unbatched models.
    sample: Sampler
    outputs: tuple[str, ...]
    # As the server should see it: 0 = no batch dimension (full shapes per request).
    max_batch_size: int
    has_config: bool = True

    @property
    def directory(self) -> Path:
        return self.onnx_path.parent.parent


# -- reference ------------------------------------------------------------------------


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def reference(model_path: Path, inputs: Inputs) -> dict[str, np.ndarray]:
    """Every output of ``model_path`` on ``inputs`` in a local ONNX Runtime session.

    Strings are numpy object arrays of ``str``: ONNX Runtime's Python binding turns ``bytes``
    objects into their repr ("b'hello'"), so a server must decode BYTES elements as UTF-8.
    """
    session = _session(str(model_path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


# -- writing --------------------------------------------------------------------------


def _finish(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    ir_version = 8 if opset <= 17 else 9
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def _write(root: Path, name: str, model: onnx.ModelProto, config: str | None) -> Path:
    """``<root>/<name>/1/model.onnx`` and, when given, ``<root>/<name>/config.pbtxt``."""
    path = layout.model_path(root, name, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    if config is not None:
        layout.config_path(root, name).write_text(config, encoding="utf-8")
    return path


def _tensor_config(name: str, dtype: np.dtype, dims: list[int], extra: str = "") -> str:
    dims_text = ", ".join(str(d) for d in dims)
    return (
        f'  {{ name: "{name}" data_type: {_TRITON_TYPE[np.dtype(dtype)]} '
        f"dims: [ {dims_text} ]{extra} }}"
    )


def _config(
    name: str,
    *,
    max_batch_size: int,
    inputs: list[tuple[str, type[np.generic], list[int]]],
    outputs: list[tuple[str, type[np.generic], list[int]]],
    batching: str | None = "",
    output_extra: dict[str, str] | None = None,
) -> str:
    """Hand-written Triton text, as a user would write it (dims without the batch axis)."""
    extra = output_extra or {}
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(_tensor_config(n, np.dtype(t), d) for n, t, d in inputs),
        "]",
        "output [",
        ",\n".join(_tensor_config(n, np.dtype(t), d, extra.get(n, "")) for n, t, d in outputs),
        "]",
    ]
    if batching is not None:
        lines.append(f"dynamic_batching {{ {batching} }}" if batching else "dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- resnet ---------------------------------------------------------------------------


@functools.cache
def _resnet_onnx() -> bytes:
    """resnet18(weights=None), seeded, exported once per test process (it takes seconds)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    sample = torch.rand(2, 3, 224, 224)
    chatty = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export")]
    for logger in chatty:
        logger.setLevel(logging.WARNING)
    with torch.no_grad():
        program = torch.onnx.export(
            net,
            (sample,),
            input_names=["pixels"],
            output_names=["logits"],
            opset_version=18,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", max=64)},),
            optimize=True,
            verbose=False,
        )
    assert program is not None
    buffer = io.BytesIO()
    onnx.save(program.model_proto, buffer)
    return buffer.getvalue()


def resnet_pixels(rows: int, seed: int = 0) -> Inputs:
    """ImageNet-normalized noise: pixels FP32 [rows, 3, 224, 224]."""
    return {"pixels": _rng(seed).standard_normal((rows, 3, 224, 224), dtype=np.float32)}


def resnet(root: Path) -> ZooModel:
    config = _config(
        "resnet",
        max_batch_size=8,
        inputs=[("pixels", np.float32, [3, 224, 224])],
        outputs=[("logits", np.float32, [RESNET_CLASSES])],
        output_extra={"logits": f' label_filename: "{LABEL_FILENAME}"'},
    )
    path = _write(root, "resnet", onnx.load_from_string(_resnet_onnx()), config)
    (path.parent.parent / LABEL_FILENAME).write_text("\n".join(RESNET_LABELS) + "\n")
    return ZooModel("resnet", path, resnet_pixels, ("logits",), max_batch_size=8)


# -- plain_mlp ------------------------------------------------------------------------


def plain_mlp_inputs(rows: int, seed: int = 0) -> Inputs:
    return {"input": _rng(seed).standard_normal((rows, 64), dtype=np.float32)}


def plain_mlp(root: Path) -> ZooModel:
    """The issue's first example: a plain torch.onnx.export with a hand-written config."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            net,
            (torch.rand(2, 64),),
            input_names=["input"],
            output_names=["logits"],
            opset_version=18,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=True,
            verbose=False,
        )
    assert program is not None
    config = _config(
        "plain_mlp",
        max_batch_size=32,
        inputs=[("input", np.float32, [64])],
        outputs=[("logits", np.float32, [10])],
    )
    path = _write(root, "plain_mlp", program.model_proto, config)
    return ZooModel("plain_mlp", path, plain_mlp_inputs, ("logits",), max_batch_size=32)


# -- two_inputs -----------------------------------------------------------------------


def two_inputs_inputs(rows: int, seed: int = 0) -> Inputs:
    rng = _rng(seed)
    return {
        "x": rng.standard_normal((rows, 4), dtype=np.float32),
        "k": rng.integers(-3, 4, size=(rows, 1), dtype=np.int64),
    }


# Square matrix products per execution of two_inputs, whatever its rows: about 10 ms
# on one core, so that concurrent requests queue behind a running execution and are
# merged by the next one (a lone fast model leaves merging to the event loop's timing).
PACE_SIZE, PACE_STEPS = 256, 8


def _pace_nodes(source: str, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``out`` = +0.0 from a chain of matmuls seeded by mean(source)."""
    rng = np.random.default_rng(7)
    matrix = (rng.standard_normal((PACE_SIZE, PACE_SIZE)) / np.sqrt(PACE_SIZE)).astype(np.float32)
    inits = [
        numpy_helper.from_array(matrix, "pace_c"),
        numpy_helper.from_array(np.array([PACE_SIZE, PACE_SIZE], dtype=np.int64), "pace_shape"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "pace_zero"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [source], ["pace_mean"], keepdims=0),
        helper.make_node("Expand", ["pace_mean", "pace_shape"], ["pace_a0"]),
    ]
    for i in range(PACE_STEPS):
        nodes.append(helper.make_node("MatMul", [f"pace_a{i}", "pace_c"], [f"pace_m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"pace_m{i}"], [f"pace_a{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"pace_a{PACE_STEPS}"], ["pace_heavy"], keepdims=0),
        # |heavy| * 0 is +0.0 whatever the batch: the outputs stay bit-identical per row.
        helper.make_node("Abs", ["pace_heavy"], ["pace_size"]),
        helper.make_node("Mul", ["pace_size", "pace_zero"], [out]),
    ]
    return nodes, inits


def two_inputs(root: Path) -> ZooModel:
    """scaled = x * float(k) (broadcast over the 4 columns), total = double(sum(x, axis 1)).

    A zero-valued chain of matrix products paces every execution (``PACE_*``).
    """
    pace, pace_inits = _pace_nodes("x", "pace_nothing")
    nodes = [
        *pace,
        helper.make_node("Cast", ["k"], ["k_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "k_float"], ["scaled_raw"]),
        helper.make_node("Add", ["scaled_raw", "pace_nothing"], ["scaled"]),
        helper.make_node("ReduceSum", ["x", "axis1"], ["row_sum"], keepdims=1),
        helper.make_node("Cast", ["row_sum"], ["total"], to=TensorProto.DOUBLE),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("total", TensorProto.DOUBLE, ["batch", 1]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"), *pace_inits],
    )
    config = _config(
        "two_inputs",
        max_batch_size=16,
        inputs=[("x", np.float32, [4]), ("k", np.int64, [1])],
        outputs=[("scaled", np.float32, [4]), ("total", np.float64, [1])],
        batching=f"max_queue_delay_microseconds: {BATCHING_DELAY_US}",
    )
    path = _write(root, "two_inputs", _finish(graph), config)
    return ZooModel("two_inputs", path, two_inputs_inputs, ("scaled", "total"), 16)


# -- half_bool ------------------------------------------------------------------------


def half_bool_inputs(rows: int, seed: int = 0) -> Inputs:
    rng = _rng(seed)
    return {
        "h": rng.standard_normal((rows, 3)).astype(np.float16),
        "mask": rng.random((rows, 3)) < 0.5,
    }


def half_bool(root: Path) -> ZooModel:
    """masked = where(mask, h, 0) in FP16, flipped = not mask."""
    nodes = [
        helper.make_node("Where", ["mask", "h", "zero"], ["masked"]),
        helper.make_node("Not", ["mask"], ["flipped"]),
    ]
    graph = helper.make_graph(
        nodes,
        "half_bool",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["batch", 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("masked", TensorProto.FLOAT16, ["batch", 3]),
            helper.make_tensor_value_info("flipped", TensorProto.BOOL, ["batch", 3]),
        ],
        [numpy_helper.from_array(np.array(0.0, dtype=np.float16), "zero")],
    )
    config = _config(
        "half_bool",
        max_batch_size=8,
        inputs=[("h", np.float16, [3]), ("mask", np.bool_, [3])],
        outputs=[("masked", np.float16, [3]), ("flipped", np.bool_, [3])],
    )
    path = _write(root, "half_bool", _finish(graph), config)
    return ZooModel("half_bool", path, half_bool_inputs, ("masked", "flipped"), 8)


# -- all_ints -------------------------------------------------------------------------


def all_ints_inputs(rows: int, seed: int = 0) -> Inputs:
    """Values across each type's range (halved, so x + x does not wrap)."""
    rng = _rng(seed)
    inputs: Inputs = {}
    for name, (_, dtype) in INT_TYPES.items():
        if dtype is np.float64:
            inputs[name] = rng.standard_normal((rows, 2)) * 1e6
            continue
        info = np.iinfo(dtype)
        low, high = info.min // 2, info.max // 2
        inputs[name] = rng.integers(low, high, size=(rows, 2), dtype=dtype, endpoint=True)
    return inputs


def all_ints(root: Path) -> ZooModel:
    nodes = [helper.make_node("Add", [n, n], [f"{n}_out"]) for n in INT_TYPES]
    graph = helper.make_graph(
        nodes,
        "all_ints",
        [helper.make_tensor_value_info(n, t, ["batch", 2]) for n, (t, _) in INT_TYPES.items()],
        [
            helper.make_tensor_value_info(f"{n}_out", t, ["batch", 2])
            for n, (t, _) in INT_TYPES.items()
        ],
    )
    config = _config(
        "all_ints",
        max_batch_size=8,
        inputs=[(n, d, [2]) for n, (_, d) in INT_TYPES.items()],
        outputs=[(f"{n}_out", d, [2]) for n, (_, d) in INT_TYPES.items()],
    )
    path = _write(root, "all_ints", _finish(graph), config)
    outputs = tuple(f"{n}_out" for n in INT_TYPES)
    return ZooModel("all_ints", path, all_ints_inputs, outputs, max_batch_size=8)


# -- strings --------------------------------------------------------------------------


def strings_inputs(rows: int, seed: int = 0) -> Inputs:
    """text: object array of str [rows, 1] (UTF-8 on the wire)."""
    picks = _rng(seed).integers(0, len(STRING_TEXTS), size=rows)
    return {"text": np.array([[STRING_TEXTS[i]] for i in picks], dtype=object)}


def strings(root: Path) -> ZooModel:
    """same = text (Identity), is_hello = (text == "hello") (string Equal needs opset 19)."""
    nodes = [
        helper.make_node("Identity", ["text"], ["same"]),
        helper.make_node("Equal", ["text", "hello"], ["is_hello"]),
    ]
    graph = helper.make_graph(
        nodes,
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [
            helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("is_hello", TensorProto.BOOL, ["batch", 1]),
        ],
        [helper.make_tensor("hello", TensorProto.STRING, [], [b"hello"])],
    )
    config = _config(
        "strings",
        max_batch_size=8,
        inputs=[("text", np.object_, [1])],
        outputs=[("same", np.object_, [1]), ("is_hello", np.bool_, [1])],
    )
    path = _write(root, "strings", _finish(graph, opset=19), config)
    return ZooModel("strings", path, strings_inputs, ("same", "is_hello"), max_batch_size=8)


# -- ragged ---------------------------------------------------------------------------


def ragged_inputs(rows: int, seed: int = 0, length: int = 3) -> Inputs:
    return {"seq": _rng(seed).standard_normal((rows, length), dtype=np.float32)}


def ragged(root: Path) -> ZooModel:
    """A dynamic non-batch axis: seq [b, n] -> sum [b, 1], doubled [b, n]."""
    nodes = [
        helper.make_node("ReduceSum", ["seq", "axis1"], ["sum"], keepdims=1),
        helper.make_node("Add", ["seq", "seq"], ["doubled"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ragged",
        [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["batch", "length"])],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", "length"]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    config = _config(
        "ragged",
        max_batch_size=8,
        inputs=[("seq", np.float32, [-1])],
        outputs=[("sum", np.float32, [1]), ("doubled", np.float32, [-1])],
        batching=f"max_queue_delay_microseconds: {BATCHING_DELAY_US}",
    )
    path = _write(root, "ragged", _finish(graph), config)
    return ZooModel("ragged", path, ragged_inputs, ("sum", "doubled"), max_batch_size=8)


# -- no_config ------------------------------------------------------------------------


def no_config_inputs(rows: int, seed: int = 0) -> Inputs:
    rng = _rng(seed)
    return {
        "features": rng.standard_normal((rows, 3), dtype=np.float32),
        "counts": rng.integers(-100, 100, size=(rows, 2), dtype=np.int32),
    }


def no_config(root: Path) -> ZooModel:
    """No config.pbtxt: the server derives it (Triton's auto-complete)."""
    nodes = [
        helper.make_node("Neg", ["features"], ["negated"]),
        helper.make_node("Add", ["counts", "counts"], ["twice"]),
    ]
    graph = helper.make_graph(
        nodes,
        "no_config",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("counts", TensorProto.INT32, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("twice", TensorProto.INT32, ["batch", 2]),
        ],
    )
    path = _write(root, "no_config", _finish(graph), None)
    return ZooModel(
        "no_config",
        path,
        no_config_inputs,
        ("negated", "twice"),
        max_batch_size=NO_CONFIG_MAX_BATCH_SIZE,
        has_config=False,
    )


# -- unbatched ------------------------------------------------------------------------


def unbatched_inputs(rows: int = 1, seed: int = 0) -> Inputs:
    """Always the full shape [2, 3]: the model has no batch dimension."""
    del rows
    return {"m": _rng(seed).standard_normal((2, 3), dtype=np.float32)}


def unbatched(root: Path) -> ZooModel:
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["m"], ["t"], perm=[1, 0])],
        "unbatched",
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, 2])],
    )
    config = _config(
        "unbatched",
        max_batch_size=0,
        inputs=[("m", np.float32, [2, 3])],
        outputs=[("t", np.float32, [3, 2])],
        batching=None,
    )
    path = _write(root, "unbatched", _finish(graph), config)
    return ZooModel("unbatched", path, unbatched_inputs, ("t",), max_batch_size=0)


# -- mismatch -------------------------------------------------------------------------

MISMATCH_CONFIG_DIMS = [5]
MISMATCH_GRAPH_DIMS = [4]


def mismatch_inputs(rows: int, seed: int = 0) -> Inputs:
    return {"x": _rng(seed).standard_normal((rows, 4), dtype=np.float32)}


def mismatch(root: Path) -> ZooModel:
    """A valid graph (x [b, 4] -> y) whose config says dims [5]: the server must refuse it."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "mismatch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    config = _config(
        "mismatch",
        max_batch_size=8,
        inputs=[("x", np.float32, MISMATCH_CONFIG_DIMS)],
        outputs=[("y", np.float32, MISMATCH_GRAPH_DIMS)],
    )
    path = _write(root, "mismatch", _finish(graph), config)
    return ZooModel("mismatch", path, mismatch_inputs, ("y",), max_batch_size=8)


BUILDERS: dict[str, Callable[[Path], ZooModel]] = {
    "resnet": resnet,
    "plain_mlp": plain_mlp,
    "two_inputs": two_inputs,
    "half_bool": half_bool,
    "all_ints": all_ints,
    "strings": strings,
    "ragged": ragged,
    "no_config": no_config,
    "unbatched": unbatched,
    "mismatch": mismatch,
}


def build_zoo(root: Path, names: tuple[str, ...] | None = None) -> dict[str, ZooModel]:
    """Write the named models (default: all) into ``root``; name -> ZooModel."""
    root.mkdir(parents=True, exist_ok=True)
    return {name: BUILDERS[name](root) for name in names or tuple(BUILDERS)}
