"""The server's ONNX Runtime helpers need nothing from the training stack."""

from __future__ import annotations

import onnxruntime as ort
from onnx import TensorProto, helper

from serving.runtime import PROBE_MODEL


def test_the_embedded_cuda_probe_is_the_identity_graph_onnx_helper_builds() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert model.SerializeToString() == PROBE_MODEL
    session = ort.InferenceSession(PROBE_MODEL, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
