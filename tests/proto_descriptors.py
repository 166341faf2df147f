"""Flatten protobuf file descriptors into comparable JSON-ready dicts.

Run as a script, it prints tritonclient's descriptors; it must stay free of imports of our
own protos, which clash with tritonclient's 'inference.*' symbols in one process.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.descriptor_pb2 import FieldDescriptorProto


def _short(full_name: str, file: FileDescriptor) -> str:
    return full_name.removeprefix(file.package + ".")


def _field(f: FieldDescriptor) -> dict[str, Any]:
    """Everything about a field that the wire or a text-format config depends on."""
    t = f.message_type or f.enum_type
    return {
        "number": f.number,
        "type": FieldDescriptorProto.Type.Name(f.type),
        "repeated": f.is_repeated,
        "presence": f.has_presence,
        # relative to the package of the file that defines the type, so our
        # inference.ModelConfigResponse.config (a d2lserve.config.ModelConfig)
        # compares with Triton's (an inference.ModelConfig)
        "type_name": _short(t.full_name, t.file) if t else "",
        "oneof": f.containing_oneof.name if f.containing_oneof else "",
    }


def describe(file: FileDescriptor) -> dict[str, Any]:
    """One .proto file's messages (nested and map entries too), enums and RPCs.

    Names are relative to the file's package, so our d2lserve.config messages compare
    with Triton's inference ones.
    """
    messages: dict[str, dict[str, Any]] = {}
    enums: dict[str, dict[str, int]] = {}
    methods: dict[str, list] = {}

    def walk(d: Descriptor) -> None:
        messages[_short(d.full_name, file)] = {
            "map_entry": d.GetOptions().map_entry,
            "fields": {f.name: _field(f) for f in d.fields},
        }
        for e in d.enum_types:
            enums[_short(e.full_name, file)] = {v.name: v.number for v in e.values}
        for nested in d.nested_types:
            walk(nested)

    for d in file.message_types_by_name.values():
        walk(d)
    for e in file.enum_types_by_name.values():
        enums[_short(e.full_name, file)] = {v.name: v.number for v in e.values}
    for service in file.services_by_name.values():
        for m in service.methods:
            methods[f"{service.full_name}/{m.name}"] = [
                _short(m.input_type.full_name, m.input_type.file),
                _short(m.output_type.full_name, m.output_type.file),
                m.client_streaming,
                m.server_streaming,
            ]
    return {"messages": messages, "enums": enums, "methods": methods}


if __name__ == "__main__":
    import tritonclient.grpc.model_config_pb2 as triton_config
    import tritonclient.grpc.service_pb2 as triton_service

    print(
        json.dumps(
            {
                "model_config": describe(triton_config.DESCRIPTOR),
                "grpc_service": describe(triton_service.DESCRIPTOR),
            }
        )
    )
