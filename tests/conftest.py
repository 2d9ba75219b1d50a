"""Shared fixtures: real MNIST, a tiny model trained on a little of it, live servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.logs import FLUSH_SECONDS
from training.config import ModelConfig, TrainConfig
from training.data import MnistSplits, load_mnist
from training.extra_data import ExtraConfig

TINY_MODEL = ModelConfig(
    blocks=1, filters=8, dense_units=32, dropout=0.0, dense_dropout=0.0, batch_norm=False
)
TINY_EXTRA = ExtraConfig(
    perturbed_share=0.1,
    per_font_digit=1,
    per_drawn_style=2,
    not_digit_letters_per_family=2,
    not_digits_per_kind=4,
    calibration_per_font_digit=1,
    calibration_per_drawn_style=2,
    report_per_font_digit=1,
    report_per_drawn_style=1,
    report_not_digits_per_kind=8,
)
"""A few of each extra kind: every training run in the tests goes through the whole pipeline."""


@pytest.fixture(scope="session")
def mnist() -> MnistSplits:
    """The real files, from MNIST_DIR (CI) or the per-user cache, downloading if need be."""
    return load_mnist()


def tiny_train_config(repository: Path, **overrides: object) -> TrainConfig:
    fields: dict[str, object] = {
        "model_repository": repository,
        "epochs": 2,
        "batch_size": 64,
        "limit": 1500,
        "augment": False,
        "reports": False,
        "verbose": 0,
        "model": TINY_MODEL,
        "extra": TINY_EXTRA,
        "validation_split": 0.1,
    }
    fields.update(overrides)
    return TrainConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def trained_repository(tmp_path_factory: pytest.TempPathFactory, mnist: MnistSplits) -> Path:
    """A model repository holding version 1 of a tiny CNN trained on 1,500 real digits."""
    from training.train import run

    repository = tmp_path_factory.mktemp("repository")
    run(tiny_train_config(repository), mnist)
    return repository


@pytest.fixture(scope="module")
def digits(mnist: MnistSplits) -> np.ndarray:
    return mnist.test_images[:24]


@pytest.fixture(scope="module")
def expected_digits(trained_repository: Path, digits: np.ndarray) -> list[int]:
    """What TensorFlow itself says, in this process, from the exported SavedModel."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(trained_repository / "mnist" / "1"))
    images = tf.constant(digits[..., None].astype(np.float32))
    probabilities = loaded.signatures["serving_default"](image=images)["probabilities"]
    return [int(d) for d in probabilities.numpy().argmax(axis=1)]


@pytest.fixture(scope="session")
def faulty_repository(trained_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model wrapped so that it raises or hangs on demand (tests/fault_model.py)."""
    from tests.fault_model import export_faulty_version

    repository = tmp_path_factory.mktemp("faulty")
    export_faulty_version(trained_repository / "mnist" / "1", repository)
    return repository


@pytest.fixture(scope="session")
def tensorflow_serving_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the `tensorflow-serving-api` client package, installed without its
    dependencies (it asks for the full tensorflow; its messages need only tensorflow-cpu's)."""
    target = tmp_path_factory.mktemp("tensorflow-serving-api")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         "tensorflow-serving-api==2.21.*"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's memory from /proc: `VmRSS` resident now, `VmHWM` its peak so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def answer_until_closed(connection: socket.socket) -> tuple[bytes, bytes]:
    """The raw response's head and body, read until the server closes the connection."""
    answer = b""
    while chunk := connection.recv(4096):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        """Its output so far, including what its log handler still buffered when called."""
        if self.process.poll() is None:
            time.sleep(FLUSH_SECONDS + 0.1)
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self.url + "/readyz", timeout, self)


def wait_for(url: str, timeout: float, server: LiveServer) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.logs()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not 200 within {timeout} s:\n{server.logs()[-3000:]}")


def launch_server(
    repository: Path, log_path: Path, wait_ready: bool = True, **env: str
) -> LiveServer:
    """Start `mnist-serve` as a real process on 127.0.0.1; the caller stops it (`stop_server`)."""
    port = free_port()
    environment = {
        **os.environ,
        "MNIST_MODEL_REPOSITORY": str(repository),
        "MNIST_PORT": str(port),
        "MNIST_MODEL_POLL_SECONDS": "0.2",
        "MNIST_GRPC_PORT": "0",  # off unless a test asks: servers run side by side
        # No load balancer to wait for: stopping takes a second, not the 5 s grace (tests of the
        # drain set their own).
        "MNIST_DRAIN_GRACE_SECONDS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_for(server.url + "/healthz", 60, server)
        if wait_ready:
            server.wait_ready()
    except BaseException:
        stop_server(server)
        raise
    return server


@contextlib.contextmanager
def grpc_serving(repository: Path, log_path: Path, **env: str) -> Iterator[tuple[LiveServer, int]]:
    """A live server with gRPC on a free port, and that port; stopped on exit."""
    port = free_port()
    server = launch_server(repository, log_path, MNIST_GRPC_PORT=str(port), **env)
    try:
        yield server, port
    finally:
        stop_server(server)


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """A factory for servers that live as long as the test."""
    servers: list[LiveServer] = []

    def start(repository: Path, wait_ready: bool = True, **env: str) -> LiveServer:
        log_path = tmp_path / f"server-{len(servers)}.log"
        server = launch_server(repository, log_path, wait_ready, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_server(server)


@contextlib.contextmanager
def serving_the_tiny_model(repository: Path, log_path: Path) -> Iterator[LiveServer]:
    """A server over the tiny model, with small limits for the error tests to reach."""
    server = launch_server(
        repository, log_path, MNIST_MAX_REQUEST_IMAGES="4", MNIST_MAX_BODY_BYTES="400000"
    )
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def served_model(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One server over the tiny model, shared by the tests that only send it requests (each
    server start is about 6 s of the suite). Tests that change a server's state start their own."""
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    with serving_the_tiny_model(trained_repository, log_path) as server:
        yield server


def copy_version(source_repository: Path, target_repository: Path, version: int = 1) -> None:
    """Publish a version the way the exporter does: copy beside it, then one rename."""
    model_dir = target_repository / "mnist"
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".copy-{version}"
    shutil.copytree(source_repository / "mnist" / "1", staging)
    staging.rename(model_dir / str(version))
