"""The gRPC messages and service stubs, generated from `inference.proto` when first imported.

grpcio-tools compiles the .proto in this process (`grpc.protos_and_services`), so no generated
file is kept in the repository and the messages always match the .proto beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc

_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the `service` package


def _load() -> tuple[Any, Any]:
    if str(_ROOT) not in sys.path:  # protoc resolves the .proto against sys.path
        sys.path.append(str(_ROOT))
    return grpc.protos_and_services("service/grpc_api/inference.proto")  # type: ignore[no-any-return]


inference, inference_grpc = _load()
