"""`mnist-serve`: run the service on uvicorn; every flag is also a `MNIST_*` variable."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError

from service.allocator import fix_mmap_threshold
from service.logs import configure_logging
from service.metrics import MULTIPROC_ENV
from service.settings import ENV_PREFIX, load_settings

APP = "service.__main__:app_factory"

# Flag name -> Settings field, for the flags that are plain settings.
FLAGS: dict[str, str] = {
    "--model-repository": "model_repository",
    "--model-name": "model_name",
    "--model-version": "model_version",
    "--host": "host",
    "--port": "port",
    "--grpc-port": "grpc_port",
    "--workers": "workers",
    "--log-level": "log_level",
    "--log-format": "log_format",
    "--max-batch-size": "max_batch_size",
    "--max-batch-delay-ms": "max_batch_delay_ms",
    "--max-queue-images": "max_queue_images",
    "--request-timeout-ms": "request_timeout_ms",
    "--runtime": "runtime",
}


def app_factory() -> FastAPI:
    """What each uvicorn worker process calls: settings come from the environment the CLI set."""
    from service.app import create_app

    settings = load_settings()
    if settings.runtime != "savedmodel":
        fix_mmap_threshold()  # before TensorFlow's allocations: see service/allocator.py
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def parse_args(argv: Sequence[str] | None) -> dict[str, str]:
    parser = argparse.ArgumentParser(
        prog="mnist-serve",
        description="Serve the MNIST model over HTTP. Each flag can also be set with the "
        f"environment variable {ENV_PREFIX}<FLAG> (for example {ENV_PREFIX}PORT=8080).",
    )
    for flag, field in FLAGS.items():
        env = ENV_PREFIX + field.upper()
        parser.add_argument(flag, dest=field, default=None, help=f"(env {env})")
    parser.add_argument(
        "--no-batching",
        action="store_true",
        help="run every request alone (env MNIST_BATCHING=false)",
    )
    args = vars(parser.parse_args(argv))
    overrides = {
        ENV_PREFIX + k.upper(): str(v)
        for k, v in args.items()
        if k in FLAGS.values() and v is not None
    }
    if args["no_batching"]:
        overrides[ENV_PREFIX + "BATCHING"] = "false"
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.update(parse_args(argv))
    try:
        settings = load_settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ENV_PREFIX + str(error["loc"][0]).upper()
            print(
                f"mnist-serve: {field}: {error['msg']} (got {error.get('input')!r})",
                file=sys.stderr,
            )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from service.tracing import tracing_installed

    if settings.otel_endpoint and not tracing_installed():
        print(
            f"mnist-serve: {ENV_PREFIX}OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'mnist-serving[otel]'",
            file=sys.stderr,
        )
        return 2
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Workers share their metrics through files; a fresh directory per server run, removed
        # when the run ends (a directory the operator set is theirs to keep).
        metrics_dir = tempfile.mkdtemp(prefix="mnist-serving-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir

    import uvicorn

    options: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,
        "access_log": False,
        "backlog": 4096,
        # httptools, answering overload refusals before uvicorn makes an ASGI task of them.
        "http": "service.http_protocol:EarlyRefusalProtocol",
        # After the drain grace period: how long accepted requests may take to finish.
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_seconds),
    }
    try:
        if settings.workers > 1:
            # uvicorn's supervisor builds each worker's server itself: the plain shutdown.
            uvicorn.run(APP, workers=settings.workers, **options)
        else:
            from service.shutdown import LingeringServer

            LingeringServer(uvicorn.Config(APP, **options)).run()
    except KeyboardInterrupt:
        # uvicorn raises Ctrl-C again once it has shut down cleanly: no traceback for that.
        return 130
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
