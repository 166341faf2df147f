"""Drive a server with NVIDIA's tritonclient, unchanged, and print what it saw as one JSON object.

Runs in its own process: tritonclient's generated 'inference.*' protobuf symbols clash
with ours (protos.grpc_service_pb2) inside one process. Every step is recorded on its
own, an exception as {"error": "..."}, so one missing feature does not hide the others.
Arrays come back exactly: {"datatype", "dtype", "shape", "hex" (little-endian bytes)}.

usage: python triton_generic_probe.py serve TARGET INPUTS.npz   (keys "<model>.<input>")
       python triton_generic_probe.py control TARGET             (an explicit-mode server)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import np_to_triton_dtype

TIMEOUT = 60.0  # seconds, every call


def attempt(step: Callable[[], object]) -> object:
    try:
        return step()
    except Exception as error:  # any failure is recorded for the test to report
        return {"error": f"{type(error).__name__}: {error}"}


def exact(array: np.ndarray) -> dict:
    little = array.astype(array.dtype.newbyteorder("<"))
    return {"dtype": little.dtype.str, "shape": list(array.shape), "hex": little.tobytes().hex()}


def infer(client: triton.InferenceServerClient, model: str, inputs: dict[str, np.ndarray]) -> dict:
    tensors = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors, client_timeout=TIMEOUT)
    outputs = result.get_response().outputs
    return {o.name: {"datatype": o.datatype, **exact(result.as_numpy(o.name))} for o in outputs}


def classify(client: triton.InferenceServerClient, pixels: np.ndarray) -> dict:
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    requested = triton.InferRequestedOutput("logits", class_count=3)
    result = client.infer("resnet", [tensor], outputs=[requested], client_timeout=TIMEOUT)
    output = result.get_output("logits")
    strings = result.as_numpy("logits")
    return {
        "datatype": output.datatype,
        "shape": list(output.shape),
        "strings": [[s.decode() for s in row] for row in strings.tolist()],
    }


def serve(target: str, inputs_path: str) -> dict:
    loaded = np.load(inputs_path)
    inputs: dict[str, dict[str, np.ndarray]] = {}
    for key in loaded.files:
        model, name = key.split(".", 1)
        inputs.setdefault(model, {})[name] = loaded[key]
    client = triton.InferenceServerClient(target)
    seen = {
        "config_two_inputs": attempt(
            lambda: client.get_model_config("two_inputs", as_json=True, client_timeout=TIMEOUT)
        ),
        "config_no_config": attempt(
            lambda: client.get_model_config("no_config", as_json=True, client_timeout=TIMEOUT)
        ),
        "infer_two_inputs": attempt(lambda: infer(client, "two_inputs", inputs["two_inputs"])),
        "infer_half_bool": attempt(lambda: infer(client, "half_bool", inputs["half_bool"])),
        "classes_resnet": attempt(lambda: classify(client, inputs["resnet"]["pixels"])),
    }
    # After the inference above, so that it is counted.
    seen["statistics_two_inputs"] = attempt(
        lambda: client.get_inference_statistics("two_inputs", as_json=True, client_timeout=TIMEOUT)
    )
    seen["index"] = attempt(
        lambda: client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT)
    )
    client.close()
    return seen


def control(target: str) -> dict:
    """Load, check, unload, check; a name outside the repository must be refused."""
    client = triton.InferenceServerClient(target)

    def ready(name: str) -> object:
        return attempt(lambda: client.is_model_ready(name, client_timeout=TIMEOUT))

    seen: dict = {"load": attempt(lambda: client.load_model("half_bool", client_timeout=120))}
    seen["ready_after_load"] = ready("half_bool")
    seen["unload"] = attempt(lambda: client.unload_model("half_bool", client_timeout=120))
    seen["ready_after_unload"] = ready("half_bool")
    seen["load_outside"] = attempt(lambda: client.load_model("../half_bool", client_timeout=60))
    seen["ready_two_inputs"] = ready("two_inputs")
    client.close()
    return seen


if __name__ == "__main__":
    command, target, *rest = sys.argv[1:]
    result = serve(target, rest[0]) if command == "serve" else control(target)
    print(json.dumps(result))
