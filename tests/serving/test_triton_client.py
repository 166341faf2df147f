"""NVIDIA's tritonclient.grpc works against our KServe v2 service (in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

PROBE = Path(__file__).with_name("triton_client_probe.py")


def test_tritonclient_live_ready_metadata_infer_and_stream(server, model_repository, tmp_path):
    images = np.random.default_rng(3).random((4, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [sys.executable, str(PROBE), server.target, str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    expected = ort.InferenceSession(
        str(model_repository / "mlp/1/model.onnx"), providers=["CPUExecutionProvider"]
    ).run(["probabilities"], {"input": images})[0]

    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert not seen["missing_ready"]
    assert seen["server_name"] == "d2lserve"
    assert seen["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert seen["outputs"] == ["logits", "probabilities"]
    assert seen["infer_version"] == "1"
    np.testing.assert_allclose(seen["infer_probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen["stream_probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert len(seen["stream_errors"]) == 1
    assert "has shape [1, 3]" in seen["stream_errors"][0]
