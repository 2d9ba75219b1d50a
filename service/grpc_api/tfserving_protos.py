"""TensorFlow Serving's messages, compiled from `tfserving.proto` when first imported.

The .proto imports TensorFlow's own `tensor.proto`, `example.proto` and `meta_graph.proto`.
TensorFlow's wheel ships their compiled modules but not the .proto sources, so protoc is given
their descriptors, taken from the loaded modules (a descriptor set), and the generated code
imports those modules: the TensorProto here is TensorFlow's, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from service.grpc_api.protos import compile_proto

_PROTO = Path(__file__).with_name("tfserving.proto")


def _descriptor_set(roots: list[FileDescriptor]) -> bytes:
    """Every file `roots` depend on, dependencies first (as protoc wants them)."""
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(descriptor: FileDescriptor) -> None:
        if descriptor.name in seen:
            return
        seen.add(descriptor.name)
        for dependency in descriptor.dependencies:
            add(dependency)
        proto = files.file.add()
        descriptor.CopyToProto(proto)

    for root in roots:
        add(root)
    return bytes(files.SerializeToString())


def _compile() -> tuple[Any, Any]:
    from google.protobuf import any_pb2, wrappers_pb2
    from tensorflow.core.example import example_pb2
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    imports = _descriptor_set(
        [
            tensor_pb2.DESCRIPTOR,
            example_pb2.DESCRIPTOR,
            meta_graph_pb2.DESCRIPTOR,
            any_pb2.DESCRIPTOR,
            wrappers_pb2.DESCRIPTOR,
        ]
    )
    return compile_proto(_PROTO, "mnist_tfserving", imports)


tfserving, tfserving_grpc = _compile()
