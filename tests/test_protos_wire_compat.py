"""Our hand-written protos agree, field for field, with NVIDIA's generated ones.

tritonclient ships Triton's compiled grpc_service.proto (a superset of KServe v2) and
model_config.proto. Every message, field, enum and RPC we define must exist there with the
same number, type, cardinality, presence, oneof and type name (modulo package), or real
clients and real Triton configs would disagree with us. Our model_config.proto holds all of
Triton's; our grpc_service.proto all of it but the extensions named in LEFT_OUT. Triton's
descriptors are read in a subprocess: their 'inference.*' symbols clash with ours in one
process.
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

# Triton's extensions this server does not implement; their messages and RPCs are omitted.
LEFT_OUT = ("SystemSharedMemory", "CudaSharedMemory", "TraceSetting", "LogSettings")


def left_out(name: str) -> bool:
    """Whether a message ('A.B') or RPC ('inference.Service/Method') belongs to LEFT_OUT."""
    return name.rsplit("/", 1)[-1].split(".")[0].startswith(LEFT_OUT)


@pytest.fixture(scope="module")
def triton() -> dict:
    done = subprocess.run(
        [sys.executable, str(DUMP)], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def ours() -> dict:
    return {
        "model_config": describe(model_config_pb2.DESCRIPTOR),
        "grpc_service": describe(grpc_service_pb2.DESCRIPTOR),
    }


def mismatches(ours: dict, theirs: dict) -> list[str]:
    """One line per message or field of ours that differs from (or is missing in) Triton's."""
    found = []
    for message, spec in ours.items():
        other = theirs.get(message)
        if other is None:
            found.append(f"{message}: not in Triton's protos")
            continue
        if spec["map_entry"] != other["map_entry"]:
            found.append(f"{message}: map entry {spec['map_entry']}, Triton {other['map_entry']}")
        for name in sorted(spec["fields"].keys() | other["fields"].keys()):
            mine, its = spec["fields"].get(name), other["fields"].get(name)
            if mine != its:
                found.append(f"{message}.{name}: ours {mine}, Triton {its}")
    return found


def test_model_config_is_tritons_message_for_message_field_for_field(triton, ours) -> None:
    mine, theirs = ours["model_config"]["messages"], triton["model_config"]["messages"]
    assert sorted(theirs.keys() - mine.keys()) == [], "Triton's messages we lack"
    assert not (problems := mismatches(mine, theirs)), "\n".join(problems)
    assert "ModelConfig.ParametersEntry" in mine  # map entries and nested messages are walked
    assert len(mine) > 50


def test_model_config_enums_are_tritons_value_for_value(triton, ours) -> None:
    mine, theirs = ours["model_config"]["enums"], triton["model_config"]["enums"]
    assert mine == theirs
    assert "ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind" in mine  # nested enums too


def test_every_grpc_service_message_matches_tritons_field_for_field(triton, ours) -> None:
    mine, theirs = ours["grpc_service"]["messages"], triton["grpc_service"]["messages"]
    assert not (problems := mismatches(mine, theirs)), "\n".join(problems)
    assert mine["ModelConfigResponse"]["fields"]["config"]["type_name"] == "ModelConfig"
    assert ours["grpc_service"]["enums"] == triton["grpc_service"]["enums"]


def test_grpc_service_leaves_out_only_shared_memory_trace_and_log_settings(triton, ours) -> None:
    mine, theirs = ours["grpc_service"]["messages"], triton["grpc_service"]["messages"]
    missing = theirs.keys() - mine.keys()
    assert sorted(m for m in missing if not left_out(m)) == []
    assert sorted(m for m in mine if left_out(m)) == []


def test_every_rpc_matches_tritons_service(triton, ours) -> None:
    mine, theirs = ours["grpc_service"]["methods"], triton["grpc_service"]["methods"]
    for method, signature in mine.items():
        assert theirs.get(method) == signature, method
    assert sorted(m for m in theirs.keys() - mine.keys() if not left_out(m)) == []
    assert "inference.GRPCInferenceService/RepositoryModelUnload" in mine
