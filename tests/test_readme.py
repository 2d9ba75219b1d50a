"""Every command in README.md, run as written, or named here with the CI step that runs it.

Commands come from the README's `sh` and `python` blocks and its inline benchmark commands. A
command added to the README that is neither run below nor in `COVERED` fails
`test_every_readme_command_is_run_or_covered`. What is adapted, and why:

- `/data/mnist` is `MNIST_DIR`, port 8000 a free port, `.venv/bin/` this interpreter's
  environment, and `models` a temporary repository holding a tiny model (the README's
  commands must not write into the checkout).
- Training commands get `--limit 1000 --epochs 1 --no-reports` appended (later flags win), so
  every flag they show is parsed and used, in seconds; `make run` gets `TRAIN_FLAGS` the same way.
- Commands that serve run until the server logs "ready", then get Ctrl-C.
- Benchmark commands (minutes to hours each; the README's figures come from them) run until
  their arguments are parsed (tests/parse_only.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LiveServer, free_port, grpc_serving

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent
QUICK_TRAINING = "--limit 1000 --epochs 1 --no-reports"

# Commands run by another CI step, or that need what this machine has not (a Docker engine, a
# Kubernetes cluster): the step that covers each.
COVERED = {
    r"(MNIST_DIR=\S+ )?make test\b": ".ci/run runs `make test` itself: this suite",
    r"make deploy-check\b": ".ci/run runs it",
    r"make container-smoke\b": ".ci/run runs it",
    r"docker build\b": "make container-smoke builds the same Dockerfile with podman",
    r"mkdir -p models && chmod": "make container-smoke (deploy/container_smoke.sh) does the same",
    r"docker run .*mnist-train": "make container-smoke trains with the image the same way",
    r"docker run --rm -p 8000": "make container-smoke serves from the image, waits for /readyz",
    r"(MNIST_HOST_DIR=\S+ )?docker compose": "make deploy-check validates docker-compose.yml",
    r"kubectl\b": "make deploy-check validates k8s/ (kubernetes-validate, checkov)",
    r"apt-get install": "installs a system package (.ci/run installs what the tests need)",
}


@dataclass(frozen=True)
class Command:
    text: str
    kind: str  # "sh", "python" or "inline"

    @property
    def id(self) -> str:
        return re.sub(r"\s+", " ", self.text)[:70]


def readme_commands() -> list[Command]:
    commands: list[Command] = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.MULTILINE | re.DOTALL):
        if language == "python":
            commands.append(Command(body, "python"))
        elif language == "sh":
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line:
                    commands.append(Command(line, "sh"))
    for inline in re.findall(r"`((?:\S+=\S+ )*(?:\.venv/bin/)?python bench/[^`]+)`", README):
        commands.append(Command(inline, "inline"))
    return commands


COMMANDS = readme_commands()


def covered(command: Command) -> str | None:
    for pattern, reason in COVERED.items():
        if command.kind == "sh" and re.match(pattern, command.text):
            return reason
    return None


def is_benchmark(command: Command) -> bool:
    return "bench/" in command.text and command.kind != "python"


def is_server(command: Command) -> bool:
    return bool(re.search(r"(^|\s)make run\b|mnist-serve\b", command.text))


RUN = [c for c in COMMANDS if covered(c) is None]


def test_every_readme_command_is_run_or_covered() -> None:
    assert len(COMMANDS) >= 30  # the parser found the README's commands
    assert len(RUN) >= 20
    kinds = {c.kind for c in RUN}
    assert kinds == {"sh", "python", "inline"}
    # Each COVERED entry still matches a command: stale entries would hide a new command.
    for pattern in COVERED:
        assert any(re.match(pattern, c.text) for c in COMMANDS), pattern


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, trained_repository: Path) -> Path:
    """A directory like the checkout for commands that use relative paths, with `models`
    holding the tiny model and `examples` the shipped samples."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(trained_repository, work / "models")
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "bench").symlink_to(ROOT / "bench")
    shutil.copy(ROOT / ".env.example", work / ".env.example")
    return work


@pytest.fixture(scope="module")
def readme_server(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, int]]:
    """The server the README's client commands talk to: REST and gRPC."""
    log = tmp_path_factory.mktemp("readme-server") / "server.log"
    with grpc_serving(trained_repository, log) as served:
        yield served


def adapt(command: Command, port: int, grpc_port: int = 8500) -> str:
    text = command.text
    text = text.replace("127.0.0.1:8500", f"127.0.0.1:{grpc_port}")
    text = text.replace("/data/mnist", os.environ["MNIST_DIR"])
    text = re.sub(r"(localhost|127\.0\.0\.1):8000", f"127.0.0.1:{port}", text)
    text = re.sub(r"--port 8000\b", f"--port {port}", text)
    text = re.sub(r"MNIST_PORT=\d+", f"MNIST_PORT={port}", text)
    text = text.replace(".venv/bin/", f"{VENV_BIN}/")
    if is_benchmark(command):
        text = re.sub(
            r"(\S*python) (bench/)", rf"{sys.executable} {ROOT}/tests/parse_only.py \2", text
        )
    elif "mnist-train" in text and "--help" not in text:
        text = f"{text} {QUICK_TRAINING}"
    return text


def environment(workdir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "MNIST_MODEL_REPOSITORY": str(workdir / "models"),
        "MNIST_PORT": str(port),
        "MNIST_GRPC_PORT": str(free_port()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@pytest.mark.parametrize("command", [c for c in RUN if not is_server(c)], ids=lambda c: c.id)
def test_command_runs(
    command: Command,
    readme_server: tuple[LiveServer, int],
    workdir: Path,
    request: pytest.FixtureRequest,
) -> None:
    server, grpc_port = readme_server
    port = int(server.url.rsplit(":", 1)[1])
    text = adapt(command, port, grpc_port)
    # Commands on the shipped examples run from the checkout, the rest where `models` is a copy.
    cwd = ROOT if "examples/" in text or command.kind == "python" else workdir
    argv = [sys.executable, "-c", text] if command.kind == "python" else ["bash", "-c", text]
    env = environment(workdir, port)
    if "tensorflow_serving" in text:
        env["PYTHONPATH"] = str(request.getfixturevalue("tensorflow_serving_api"))
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{text}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if "curl" in text or "mnist-predict" in text:
        assert '"digit"' in result.stdout or "digit" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("command", [c for c in RUN if is_server(c)], ids=lambda c: c.id)
def test_server_command_gets_ready_and_stops_on_ctrl_c(
    command: Command, workdir: Path, tmp_path: Path
) -> None:
    port = free_port()
    text = adapt(command, port)
    env = environment(workdir, port)
    cwd = workdir
    make_run = "make run" in text
    # Both branches of `make run`, from the checkout (the Makefile): the plain command into an
    # empty repository trains first, quickly; the one naming the data finds a model and serves.
    trains = make_run and "MNIST_DIR=" not in text
    if make_run:
        repository = tmp_path / "models" if trains else workdir / "models"
        text = f"{text} MODELS={repository} TRAIN_FLAGS='{QUICK_TRAINING}'"
        cwd = ROOT
    log = tmp_path / "output.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", text],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the whole group, as at a terminal
        )
    try:
        deadline = time.monotonic() + 240
        while "ready: draw a digit at" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        output = log.read_text()
        assert f"http://127.0.0.1:{port}/" in output
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if trains:
        assert "training one first" in output
        assert "epoch 1/1 done" in output
    elif make_run:
        assert "training one first" not in output
