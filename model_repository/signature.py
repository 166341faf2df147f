"""The repository contract: a graph's tensor signature and the config.pbtxt that serves it.

One home for Triton's rules, used by the side that writes (training's exporter), the side
that loads (the server) and ``python -m model_repository.verify``:

* ``max_batch_size > 0``: the first dimension of every graph input and output is the batch
  dimension (dynamic in the graph) and config ``dims`` leave it out; requests carry
  ``[rows, *dims]`` and may be merged by the dynamic batcher.
* ``max_batch_size: 0``: ``dims`` are the full shapes; each request runs alone.
* Every graph input is described by the config; the config may list a subset of the
  outputs (only those are served). Names, types and dims must agree with the graph; a
  config dimension may pin a dimension the graph leaves dynamic.
* Without a config.pbtxt, or with one that leaves parts out, :func:`complete_config` fills
  them from the graph, like Triton's auto-complete.

The signature is read through ONNX Runtime (``signature_from_session``), not the ``onnx``
package, so the server needs nothing from the training stack to check it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from model_repository.datatypes import BY_CONFIG, BY_ORT, DataType
from protos import model_config_pb2 as mc

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's --backend-config=default-max-batch-size: what auto-complete gives a graph
# with a dynamic first dimension when nothing says otherwise.
DEFAULT_MAX_BATCH_SIZE = 4
# Config parts this server does not implement; a config that uses them is refused at
# load rather than served differently from what it says.
UNSUPPORTED_SCHEDULERS = ("sequence_batching", "ensemble_scheduling")
UNSUPPORTED_LISTS = ("batch_input", "batch_output")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, config data type, and dims (-1 = any size)."""

    name: str
    data_type: int  # model_config_pb2.DataType; TYPE_INVALID when no wire type holds it
    dims: tuple[int, ...]

    @property
    def datatype(self) -> DataType | None:
        return BY_CONFIG.get(self.data_type)

    def describe(self) -> str:
        return f"'{self.name}' {mc.DataType.Name(self.data_type)} {list(self.dims)}"


@dataclass(frozen=True)
class GraphSignature:
    """The graph's own inputs and outputs, with their full shapes."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Whether every input and output starts with a dynamic dimension (Triton's rule)."""
        tensors = (*self.inputs, *self.outputs)
        return bool(tensors) and all(spec.dims and spec.dims[0] == -1 for spec in tensors)

    def config_specs(self, batched: bool) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs as config entries describe them (no batch dim when batched)."""

        def strip(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            if not batched:
                return specs
            return tuple(TensorSpec(s.name, s.data_type, s.dims[1:]) for s in specs)

        return strip(self.inputs), strip(self.outputs)


class _NodeArg(Protocol):
    name: str
    type: str
    shape: Sequence[int | str | None]


class _Session(Protocol):
    def get_inputs(self) -> Sequence[_NodeArg]: ...
    def get_outputs(self) -> Sequence[_NodeArg]: ...


def _spec(node: _NodeArg) -> TensorSpec:
    datatype = BY_ORT.get(node.type)
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or ()))
    return TensorSpec(node.name, datatype.config if datatype else mc.TYPE_INVALID, dims)


def signature_from_session(session: _Session) -> GraphSignature:
    """Names, types and shapes of an ONNX Runtime session's inputs and outputs."""
    return GraphSignature(
        inputs=tuple(_spec(node) for node in session.get_inputs()),
        outputs=tuple(_spec(node) for node in session.get_outputs()),
    )


def ort_type_name(session: _Session, name: str) -> str:
    """ONNX Runtime's type string of a tensor, for messages about unsupported types."""
    for node in (*session.get_inputs(), *session.get_outputs()):
        if node.name == name:
            return node.type
    return "unknown"


def _dims_agree(configured: Sequence[int], graph: Sequence[int]) -> bool:
    return len(configured) == len(graph) and all(
        want == have or want == -1 or have == -1
        for want, have in zip(configured, graph, strict=True)
    )


def _compare_tensors(
    kind: str,
    configured: Iterable[mc.ModelInput | mc.ModelOutput],
    graph: tuple[TensorSpec, ...],
    all_required: bool,
) -> list[str]:
    problems = []
    by_name = {spec.name: spec for spec in graph}
    seen: set[str] = set()
    for entry in configured:
        if entry.name in seen:
            problems.append(f"config {kind} '{entry.name}' is listed twice")
            continue
        seen.add(entry.name)
        have = by_name.get(entry.name)
        if have is None:
            problems.append(
                f"config {kind} '{entry.name}' is not in the graph (graph {kind}s: "
                f"{sorted(by_name)})"
            )
            continue
        if entry.data_type != have.data_type:
            problems.append(
                f"config {kind} '{entry.name}' data_type is "
                f"{mc.DataType.Name(entry.data_type)}; the graph has "
                f"{mc.DataType.Name(have.data_type)}"
            )
        if not _dims_agree(entry.dims, have.dims):
            problems.append(
                f"config {kind} '{entry.name}' dims are {list(entry.dims)}; the graph has "
                f"{list(have.dims)}"
            )
        if BY_CONFIG.get(entry.data_type) is None:
            problems.append(
                f"{kind} '{entry.name}' has data_type {mc.DataType.Name(entry.data_type)}, "
                "which this server cannot carry"
            )
    if all_required:
        for name in sorted(set(by_name) - seen):
            problems.append(f"graph {kind} '{name}' is missing from the config")
    return problems


def config_mismatches(config: mc.ModelConfig, signature: GraphSignature, name: str) -> list[str]:
    """Every way ``config`` disagrees with the graph; empty when it can be served.

    ``name`` is the model directory name, which the config's name must equal.
    """
    problems = []
    if config.name != name:
        problems.append(f"config name is '{config.name}'; the directory name is '{name}'")
    if config.platform != PLATFORM and config.backend != BACKEND:
        problems.append(
            f"config platform is '{config.platform}' (backend '{config.backend}'); "
            f"this server runs platform '{PLATFORM}' / backend '{BACKEND}'"
        )
    scheduler = config.WhichOneof("scheduling_choice")
    if scheduler in UNSUPPORTED_SCHEDULERS:
        problems.append(f"config uses {scheduler}, which this server does not support")
    for field in UNSUPPORTED_LISTS:
        if getattr(config, field):
            problems.append(f"config uses {field}, which this server does not support")
    batched = config.max_batch_size > 0
    if config.max_batch_size < 0:
        problems.append(f"config max_batch_size is {config.max_batch_size}; expected >= 0")
    elif batched and not signature.batchable:
        first = {s.name: list(s.dims) for s in (*signature.inputs, *signature.outputs)}
        problems.append(
            f"config max_batch_size is {config.max_batch_size}, but not every graph tensor "
            f"has a dynamic first (batch) dimension: {first}; use max_batch_size: 0"
        )
        return problems
    inputs, outputs = signature.config_specs(batched)
    problems += _compare_tensors("input", config.input, inputs, all_required=True)
    problems += _compare_tensors("output", config.output, outputs, all_required=False)
    for entry in config.input:
        if entry.HasField("reshape"):
            problems.append(f"config input '{entry.name}' uses reshape, which is not supported")
        if entry.format != mc.ModelInput.FORMAT_NONE and len(entry.dims) != 3:
            layout = mc.ModelInput.Format.Name(entry.format)
            problems.append(
                f"config input '{entry.name}' format is {layout} with dims {list(entry.dims)}; "
                "an image format needs 3 dims"
            )
    for entry in config.output:
        if entry.HasField("reshape"):
            problems.append(f"config output '{entry.name}' uses reshape, which is not supported")
    return problems


def complete_config(
    config: mc.ModelConfig | None,
    signature: GraphSignature,
    name: str,
    instance_kind: int = mc.ModelInstanceGroup.KIND_CPU,
) -> mc.ModelConfig:
    """``config`` with what it leaves out filled from the graph (Triton's auto-complete).

    No config (or one listing no tensors and max_batch_size 0) on a graph whose tensors
    all start with a dynamic dimension gets max_batch_size ``DEFAULT_MAX_BATCH_SIZE`` and
    dynamic batching; missing inputs and outputs, platform, name, version policy and the
    instance group are filled in. What the config does say is kept as it is, to be
    checked by :func:`config_mismatches`.
    """
    completed = mc.ModelConfig()
    if config is not None:
        completed.CopyFrom(config)
    if not completed.name:
        completed.name = name
    if not completed.platform and not completed.backend:
        completed.platform = PLATFORM
    listed_nothing = not completed.input and not completed.output
    unstated = config is None or (listed_nothing and completed.max_batch_size == 0)
    if unstated and signature.batchable:
        completed.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not completed.HasField("dynamic_batching"):
            completed.dynamic_batching.SetInParent()
    if completed.max_batch_size == 0 or signature.batchable:
        inputs, outputs = signature.config_specs(completed.max_batch_size > 0)
        if not completed.input:
            for spec in inputs:
                completed.input.add(name=spec.name, data_type=spec.data_type, dims=spec.dims)
        if not completed.output:
            for spec in outputs:
                completed.output.add(name=spec.name, data_type=spec.data_type, dims=spec.dims)
    if not completed.HasField("version_policy"):
        completed.version_policy.latest.num_versions = 1
    if not completed.instance_group:
        completed.instance_group.add(count=1, kind=instance_kind)
    return completed
