"""The gRPC messages and service stubs, generated from `inference.proto` when first imported.

protoc (grpcio-tools) runs in a child process and writes the modules into a temporary
directory, so no generated file is kept in the repository and the messages always match the
.proto beside this file. A child process, because protoc's C++ protobuf and TensorFlow's, in
one process, crash it (seen as a silent exit while TensorFlow was loading in another thread).
The directory is removed once the modules are imported: every server process compiles its own,
and a host that restarts the server for months would otherwise collect one per start.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def compile_proto(
    source: Path, module: str, descriptor_set: bytes | None = None
) -> tuple[Any, Any]:
    """`module`_pb2 and `module`_pb2_grpc, compiled from `source`; `descriptor_set`: the
    compiled descriptors of the files it imports that are not on disk."""
    out = Path(tempfile.mkdtemp(prefix=f"mnist-{module}-"))
    try:
        return _compile_and_import(source, module, descriptor_set, out)
    finally:
        if str(out) in sys.path:
            sys.path.remove(str(out))
        shutil.rmtree(out, ignore_errors=True)


def _compile_and_import(
    source: Path, module: str, descriptor_set: bytes | None, out: Path
) -> tuple[Any, Any]:
    (out / f"{module}.proto").write_text(source.read_text())
    arguments = [f"--proto_path={out}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if descriptor_set is not None:
        (out / "imports.pb").write_bytes(descriptor_set)
        arguments.insert(0, f"--descriptor_set_in={out / 'imports.pb'}")
    compiled = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *arguments, f"{module}.proto"],
        capture_output=True,
        text=True,
        check=False,
    )
    if compiled.returncode != 0:
        raise RuntimeError(f"protoc could not compile {source.name}: {compiled.stderr.strip()}")
    sys.path.insert(0, str(out))
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


inference, inference_grpc = compile_proto(
    Path(__file__).with_name("inference.proto"), "mnist_inference"
)
