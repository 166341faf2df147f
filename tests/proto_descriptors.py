"""Flatten protobuf file descriptors into comparable JSON-ready dicts.

Run as a script, it prints tritonclient's descriptors; it must stay free of imports of our
own protos, which clash with tritonclient's 'inference.*' symbols in one process.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FileDescriptor


def describe(files: list[tuple[FileDescriptor, str]]) -> dict[str, Any]:
    """Messages (field -> [number, type, repeated, type name]), enums and service methods.

    Names are relative to each file's package, so our d2lserve.config messages compare
    with Triton's inference ones.
    """
    messages: dict[str, dict[str, list]] = {}
    enums: dict[str, dict[str, int]] = {}
    methods: dict[str, list] = {}
    for file, package in files:

        def short(name: str, package: str = package) -> str:
            return name.removeprefix(package + ".")

        def walk(d: Descriptor, short=short) -> None:
            messages[short(d.full_name)] = {
                f.name: [
                    f.number,
                    f.type,
                    f.is_repeated,
                    # relative to the package of the file that defines the type, so our
                    # inference.ModelConfigResponse.config (a d2lserve.config.ModelConfig)
                    # compares with Triton's (an inference.ModelConfig)
                    short(t.full_name, t.file.package)
                    if (t := f.message_type or f.enum_type)
                    else "",
                ]
                for f in d.fields
            }
            for nested in d.nested_types:
                walk(nested)

        for d in file.message_types_by_name.values():
            walk(d)
        for e in file.enum_types_by_name.values():
            enums[e.name] = {v.name: v.number for v in e.values}
        for service in file.services_by_name.values():
            for m in service.methods:
                methods[f"{service.full_name}/{m.name}"] = [
                    m.input_type.name,
                    m.output_type.name,
                    m.client_streaming,
                    m.server_streaming,
                ]
    return {"messages": messages, "enums": enums, "methods": methods}


if __name__ == "__main__":
    import tritonclient.grpc.model_config_pb2 as triton_config
    import tritonclient.grpc.service_pb2 as triton_service

    print(
        json.dumps(
            describe(
                [(triton_config.DESCRIPTOR, "inference"), (triton_service.DESCRIPTOR, "inference")]
            )
        )
    )
