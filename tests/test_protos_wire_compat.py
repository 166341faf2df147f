"""Our hand-written protos agree, field for field, with NVIDIA's generated ones.

tritonclient ships Triton's compiled grpc_service.proto (a superset of KServe v2) and
model_config.proto. Every message, field, enum and RPC we define must exist there with the
same number, type and cardinality, or real clients and real Triton configs would disagree
with us. Triton's descriptors are read in a subprocess: their 'inference.*' symbols clash
with ours in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from proto_descriptors import describe

from protos import grpc_service_pb2, model_config_pb2

DUMP = Path(__file__).with_name("proto_descriptors.py")


@pytest.fixture(scope="module")
def triton() -> dict:
    done = subprocess.run(
        [sys.executable, str(DUMP)], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def ours() -> dict:
    return describe(
        [
            (grpc_service_pb2.DESCRIPTOR, "inference"),
            (model_config_pb2.DESCRIPTOR, "d2lserve.config"),
        ]
    )


def test_every_kserve_and_model_config_field_matches_triton(triton, ours) -> None:
    mismatches = []
    for message, fields in ours["messages"].items():
        theirs = triton["messages"].get(message)
        if theirs is None:
            mismatches.append(f"{message}: not in Triton's protos")
            continue
        for name, spec in fields.items():
            if theirs.get(name) != spec:
                mismatches.append(f"{message}.{name}: ours {spec}, Triton {theirs.get(name)}")
    assert not mismatches, "\n".join(mismatches)
    assert len(ours["messages"]) > 30  # nested messages were walked too


def test_model_config_enums_match_triton(triton, ours) -> None:
    for name, values in ours["enums"].items():
        assert values == triton["enums"][name], name


def test_every_rpc_matches_tritons_service(triton, ours) -> None:
    assert "inference.GRPCInferenceService/ModelStreamInfer" in ours["methods"]
    for method, signature in ours["methods"].items():
        assert triton["methods"].get(method) == signature, method
