"""Every knob of the server, read once from `MNIST_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MNIST_"


class Settings(BaseSettings):
    """Defaults are the values the benchmark in `bench/serve_benchmark.py` chose on 2 CPU cores."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", protected_namespaces=()
    )

    model_repository: Path = Path("models")
    """Directory holding `<model_name>/<version>/` SavedModels, as `mnist-train` exports them."""
    model_name: str = "mnist"
    model_version: int | None = None
    """Serve this version instead of the newest one."""
    model_poll_seconds: float = Field(2.0, gt=0)
    """How often to look for a model while none is loaded yet."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access_log: bool = True
    """One structured JSON line per request."""

    batching: bool = True
    """Merge concurrent requests into one model call; off runs each request alone."""
    max_batch_size: int = Field(64, ge=1)
    """Most images in one model call."""
    max_batch_delay_ms: float = Field(1.0, ge=0)
    """Longest a request waits for company before its batch runs."""
    max_queue_images: int = Field(4096, ge=1)
    """Images waiting for the model beyond which new requests get 503 with Retry-After."""
    request_timeout_ms: float = Field(10_000, gt=0)
    """Deadline of a request in the queue; past it the request is dropped with 504."""
    max_request_images: int = Field(256, ge=1)
    """Most images one request may carry (larger batches get 422)."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413."""
    retry_after_seconds: int = Field(1, ge=1)

    tf_intra_op_threads: int = Field(0, ge=0)
    """TensorFlow threads inside one op; 0 lets TensorFlow use every core it may run on."""
    tf_inter_op_threads: int = Field(0, ge=0)

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("model_name must be a plain directory name")
        return value
