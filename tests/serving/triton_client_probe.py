"""Talk to a server with NVIDIA's tritonclient and print what it saw as one JSON object.

Runs in its own process: tritonclient's generated 'inference.*' protobuf symbols clash
with ours (protos.grpc_service_pb2) inside one process.

usage: python triton_client_probe.py TARGET INPUT.npy
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton


def main(target: str, input_path: str) -> dict:
    images = np.load(input_path)
    client = triton.InferenceServerClient(target)
    result: dict = {
        "live": client.is_server_live(client_timeout=10),
        "ready": client.is_server_ready(client_timeout=10),
        "model_ready": client.is_model_ready("mlp", client_timeout=10),
        "missing_ready": client.is_model_ready("nope", client_timeout=10),
    }
    server = client.get_server_metadata(as_json=True, client_timeout=10)
    result["server_name"] = server["name"]
    metadata = client.get_model_metadata("mlp", as_json=True, client_timeout=10)
    result["inputs"] = metadata["inputs"]
    result["outputs"] = [o["name"] for o in metadata["outputs"]]

    infer_input = triton.InferInput("input", list(images.shape), "FP32")
    infer_input.set_data_from_numpy(images)
    response = client.infer(
        "mlp",
        [infer_input],
        outputs=[triton.InferRequestedOutput("probabilities")],
        client_timeout=10,
    )
    result["infer_probabilities"] = response.as_numpy("probabilities").tolist()
    result["infer_version"] = response.get_response().model_version

    answers: queue.Queue = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), stream_timeout=30
    )
    for row in range(images.shape[0]):
        single = triton.InferInput("input", [1, *images.shape[1:]], "FP32")
        single.set_data_from_numpy(images[row : row + 1])
        client.async_stream_infer("mlp", [single], request_id=str(row))
    bad = triton.InferInput("input", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    client.async_stream_infer("mlp", [bad], request_id="bad")
    stream: dict = {}
    errors: list[str] = []
    for _ in range(images.shape[0] + 1):
        res, err = answers.get(timeout=15)
        if err is not None:
            errors.append(str(err))
        else:
            stream[res.get_response().id] = res.as_numpy("probabilities")[0].tolist()
    client.stop_stream()
    client.close()
    result["stream_probabilities"] = [stream[str(row)] for row in range(images.shape[0])]
    result["stream_errors"] = errors
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
