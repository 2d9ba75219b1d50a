"""Every knob of the server, read once from `MNIST_*` environment variables (or a `.env` file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MNIST_"


def _default_tflite_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"mnist-serving-tflite-{os.getuid()}"


# Where Kubernetes mounts the API-key Secret: one file per setting (`mnist_api_keys`, ...).
SECRETS_DIR = Path("/run/secrets/mnist-serving")


class Settings(BaseSettings):
    """Defaults are the values the benchmark in `bench/serve_benchmark.py` chose on 2 CPU cores."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", protected_namespaces=()
    )

    model_repository: Path = Path("models")
    """Directory holding `<model_name>/<version>/` SavedModels, as `mnist-train` exports them."""
    model_name: str = "mnist"
    model_version: int | None = None
    """Serve only this version (shorthand for the `specific` policy with one version)."""
    model_version_policy: Literal["latest", "all", "specific"] = "latest"
    """Which versions to serve, as TensorFlow Serving's version policy."""
    model_latest_count: int = Field(1, ge=1)
    """With the `latest` policy: serve the newest N versions."""
    model_versions: Annotated[list[int], NoDecode] = []
    """With the `specific` policy: these versions (comma-separated)."""
    model_labels: Annotated[dict[str, int], NoDecode] = {}
    """Version labels, `stable=1,canary=2`; also settable through the admin API."""
    model_poll_seconds: float = Field(2.0, gt=0)
    """How often to look at the repository for new, changed or removed versions."""
    correctness_gate: bool = True
    """Refuse a version whose answers on its shipped digits fall below its recorded accuracy."""
    correctness_margin: float = Field(0.1, ge=0, le=1)
    """How far below the recorded test accuracy the gate accuracy may fall."""
    unsure_below: float | None = Field(None, gt=0, le=1)
    """Flag answers less confident than this as unsure, for every version; default: each
    version's threshold recorded at export (0.9 for versions exported without one)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8500, ge=0, le=65535)
    """gRPC (KServe V2, health, reflection) on this port; 0 turns gRPC off."""
    grpc_max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest gRPC message either way; larger: RESOURCE_EXHAUSTED."""
    grpc_max_concurrent_calls: int = Field(4096, ge=1)
    """gRPC calls in progress at once, per worker (health checks and reflection have 64 more of
    their own); more get UNAVAILABLE with a retry hint at once. Each holds ~23 KiB until it
    ends, and a call whose message never comes lasts the read timeout: without a bound, streams
    opened faster than that timeout ends them hold memory without limit (5,000 such calls:
    +115 MiB)."""
    workers: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    """JSON lines for log pipelines; `auto`: plain text when stderr is a terminal."""
    access_log: bool = True
    """One line per request."""
    otel_endpoint: str | None = None
    """An OTLP collector to send traces to (`http://collector:4318`); unset: no tracing."""
    otel_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    """OTLP over HTTP (port 4318, `/v1/traces` is added) or gRPC (port 4317)."""
    otel_service_name: str = "mnist-serving"

    batching: bool = True
    """Merge concurrent requests into one model call; off runs each request alone."""
    max_batch_size: int = Field(32, ge=1)
    """Most images in one model call (32 measured best: README, "Dynamic batching")."""
    max_batch_delay_ms: float = Field(0.0, ge=0)
    """Longest a request waits for company before its batch runs. 0 (measured best on CPU): a
    request never waits for an idle model, and batches still form while the model is busy."""
    max_queue_images: int = Field(4096, ge=1)
    """Images waiting for the model beyond which new requests get 503 with Retry-After."""
    request_timeout_ms: float = Field(1_000, gt=0)
    """A request's time budget. It is admitted only if the work queued ahead of it and its own
    can be done within it (else 503 + Retry-After at once); past it, a queued request is dropped
    with 504. A client may ask for less with the `X-Request-Timeout-Ms` header."""
    max_queue_delay_ms: float = Field(250, gt=0)
    """The most work the queue may hold, in milliseconds of model time: a request that would
    wait longer is refused at once (503 + Retry-After). Under overload this is the latency the
    accepted requests see, and how long the server needs to recover once the overload ends."""
    max_request_images: int = Field(256, ge=1)
    """Most images one request may carry (larger batches get 422)."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413."""
    retry_after_seconds: int = Field(1, ge=1)
    client_read_timeout_seconds: float = Field(10.0, gt=0)
    """A request whose headers have not all arrived this long after its first byte, or whose
    body stops arriving for this long (or, after it, averages under 240 bytes/s), gets 408 and
    its connection is closed; a new connection
    that sends nothing for this long is closed. A stalled or slowloris client would otherwise
    hold a connection for ever."""
    client_send_timeout_seconds: float = Field(30.0, gt=0)
    """A connection whose client takes none of its response for this long, or after it takes
    it slower than 240 bytes/s (while the server holds bytes of it the kernel could not take),
    is reset, as nginx's send_timeout does. A client that never reads would otherwise hold its
    connection and the response for ever."""
    max_connections: int = Field(10_000, ge=1)
    """Client connections one worker holds, per protocol (HTTP and gRPC), lowered at start to
    what the open-file limit holds. At the limit a new HTTP connection replaces the longest-idle
    one; gRPC refuses it (`service.connections`)."""
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """Largest image upload (one raw image, or a whole multipart body); larger gets 413."""
    max_image_pixels: int = Field(40_000_000, ge=784)
    """Largest declared width x height, checked before decoding (decompression bombs): 413."""
    max_upload_images: int = Field(64, ge=1)
    """Most images in one multipart upload."""

    api_keys: Annotated[list[str], NoDecode] = []
    """Keys allowed to predict (comma-separated); empty means no authentication."""
    admin_api_keys: Annotated[list[str], NoDecode] = []
    """Keys allowed to predict and to use the admin routes."""

    drain_grace_seconds: float = Field(5.0, ge=0)
    """After SIGTERM: readiness is 503 at once, requests are still served this long (while the
    load balancer stops sending), then new requests get 503 and the server stops."""
    shutdown_timeout_seconds: float = Field(20.0, gt=0)
    """After the grace period, how long accepted requests may take to finish."""

    runtime: Literal["auto", "savedmodel", "tflite"] = "auto"
    """What runs the model: the SavedModel converted to TensorFlow Lite at load (checked to
    answer as the SavedModel does before it serves; service/tflite.py), or TensorFlow's
    SavedModel itself. `auto`: TensorFlow Lite when that check passes, else the SavedModel."""
    tflite_cache_dir: Path | None = Field(default_factory=_default_tflite_cache)
    """Converted models, kept by the content of their version (restarts and workers convert once);
    empty: convert at every load."""
    tf_intra_op_threads: int = Field(0, ge=0)
    """TensorFlow threads inside one op; 0 lets TensorFlow use every core it may run on."""
    tf_inter_op_threads: int = Field(0, ge=0)
    model_thread_niceness: int = Field(10, ge=0, le=19)
    """How much lower the model's compute threads (TensorFlow's pools, and the batcher's thread,
    where TensorFlow Lite computes) are scheduled than request handling, so a request (or a
    refusal) never waits for a batch's time slice; 0 leaves them equal."""

    @field_validator("tflite_cache_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("model_versions", mode="before")
    @classmethod
    def _split_versions(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(v) for v in value.replace(" ", "").split(",") if v]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("model_labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: object) -> object:
        if isinstance(value, str):
            labels: dict[str, int] = {}
            for item in value.split(","):
                if item.strip():
                    label, sep, version = item.partition("=")
                    if not sep:
                        raise ValueError(f"label '{item}' must look like name=version")
                    labels[label.strip()] = int(version)
            return labels
        return value

    @model_validator(mode="after")
    def _pinned_version_is_a_policy(self) -> Settings:
        if self.model_version is not None:
            self.model_version_policy = "specific"
            self.model_versions = [self.model_version]
        if self.model_version_policy == "specific" and not self.model_versions:
            raise ValueError("the 'specific' version policy needs MNIST_MODEL_VERSIONS")
        return self

    @property
    def local_url(self) -> str:
        """Where a person on this machine reaches the server (a wildcard host as loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("model_name must be a plain directory name")
        return value


def load_settings() -> Settings:
    """Environment variables, then `.env`, then secret files (lowest priority)."""
    return Settings(_secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None)
