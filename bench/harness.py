"""What the benchmarks share: their common flags, a model to serve, real request bodies, a served
process pinned to a core, its memory, and the model's in-process ceiling."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def arguments(doc: str | None, cores: bool = False) -> argparse.ArgumentParser:
    """A benchmark's command line: described by its docstring's first line, with the model
    repository and the MNIST data (`MNIST_DIR`) and, for one that serves, the cores the server
    and the load generator are pinned to."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    if cores:
        parser.add_argument("--server-core", default="1")
        parser.add_argument("--client-core", default="0")
    return parser


def ensure_model(repository: Path, data_dir: str | None) -> None:
    if any((repository / "mnist").glob("[0-9]*")):
        return
    print(f"# no model in {repository}: training a quick one for the benchmark", file=sys.stderr)
    command = [
        sys.executable,
        "-m",
        "training",
        "--model-repository",
        str(repository),
        "--limit",
        "5000",
        "--epochs",
        "1",
        "--no-reports",
        "--quiet",
    ]
    if data_dir:
        command += ["--data-dir", data_dir]
    subprocess.run(command, check=True, stdout=sys.stderr)


def request_body(images: int, data_dir: str | None, kind: str = "json") -> bytes:
    """Real test digits, as a client would send them: 28x28 nested lists of integers (`json`),
    or their uint8 pixels (`raw`, for `application/octet-stream`)."""
    sys.path.insert(0, str(HERE.parent))
    from training.data import load_mnist

    digits = load_mnist(data_dir).test_images[:images]
    if kind == "raw":
        return digits.tobytes()
    return json.dumps({"instances": digits.tolist()}).encode()


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (VmHWM: its peak), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))
    return kib / 1024


@contextlib.contextmanager
def launched(
    command: list[str],
    env: dict[str, str],
    core: str,
    ready_url: str,
    log_path: Path,
    cwd: Path | None = None,
    wait_ready: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process pinned to `core` (its children inherit the pinning), its output in
    `log_path`, waited for until `ready_url` answers 200; stopped with SIGTERM at the end."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        ["taskset", "-c", core, *command], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while wait_ready:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(ready_url, timeout=2).status == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command[0]} did not become ready; see {log_path}")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@contextlib.contextmanager
def served(
    repository: Path,
    port: int,
    core: str,
    wait_ready: bool = True,
    code: Path | None = None,
    **settings: str,
) -> Iterator[Served]:
    """`mnist-serve` as users run it (defaults, access log on) with `MNIST_<KEY>` overrides,
    pinned to `core`, its log in a temp file; stopped with SIGTERM at the end. `code`: another
    checkout of the project to run instead (a worktree of an older commit, for A/B runs)."""
    env = {
        **os.environ,
        **({"PYTHONPATH": str(code)} if code is not None else {}),
        "MNIST_MODEL_REPOSITORY": str(repository),
        "MNIST_PORT": str(port),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MNIST_GRPC_PORT": "0",  # off unless asked: several servers run side by side
        **{f"MNIST_{key.upper()}": value for key, value in settings.items()},
    }
    log_path = Path(tempfile.gettempdir()) / f"bench-server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service"]
    with launched(command, env, core, url + "/readyz", log_path, code, wait_ready) as process:
        yield Served(url, process, log_path)


def wrk(
    url: str,
    body_file: Path,
    concurrency: int,
    seconds: int,
    core: str,
    content_type: str = "application/json",
    headers: tuple[str, ...] = (),
) -> dict[str, float]:
    """POST `body_file` to `url` from wrk (one thread, pinned to `core`) for `seconds`: its
    requests, errors and latency percentiles (wrk_report.lua's JSON line)."""
    command = ["taskset", "-c", core, "wrk", "-t", "1", "-c", str(concurrency)]
    command += ["-d", f"{seconds}s", "--timeout", "10s", "-s", str(HERE / "wrk_report.lua")]
    for header in headers:
        command += ["-H", header]
    command += [url, "--", str(body_file), content_type]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    summary: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return summary


CEILING_CODE = """
import sys, time, numpy as np
from pathlib import Path
sys.path.insert(0, {root!r})
from service.runtime import configure_tensorflow, load_model
configure_tensorflow({threads}, {threads})
model_dir = Path({model_dir!r})
version = {version} or max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
model = load_model("mnist", version, model_dir / str(version), {runtime!r}, {threads})
x = np.random.default_rng(0).integers(0, 256, ({batch}, 28, 28, 1)).astype(np.float32)
for _ in range(20):
    model.predict(x)
calls, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    model.predict(x)
    calls += 1
print(calls * {batch} / (time.perf_counter() - start))
"""


def in_process_ceiling(
    repository: Path,
    core: str,
    batch: int,
    seconds: float,
    runtime: str = "auto",
    threads: int = 0,
    env: dict[str, str] | None = None,
    version: int = 0,
) -> float:
    """Images/s of the model called directly as the server calls it (`LoadedModel.predict` of
    `runtime`), on the server's core(s): the ceiling any serving figure is compared with.
    `version` 0 is the newest."""
    code = CEILING_CODE.format(
        root=str(Path(__file__).resolve().parents[1]),
        model_dir=str(repository.resolve() / "mnist"),
        runtime=runtime,
        threads=threads,
        batch=batch,
        seconds=seconds,
        version=version,
    )
    result = subprocess.run(
        ["taskset", "-c", core, sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    return float(result.stdout.strip().splitlines()[-1])


STALL_CODE = """
import time
end = time.perf_counter() + {seconds}
longest = 0.0
last = time.perf_counter()
while last < end:
    now = time.perf_counter()
    longest = max(longest, now - last)
    last = now
print(longest)
"""


def host_stall(core: str, seconds: float) -> float:
    """The longest a busy loop alone on `core` went without running, in seconds: the time this
    shared machine takes a core away. No latency measured on that core can reliably be shorter."""
    result = subprocess.run(
        ["taskset", "-c", core, sys.executable, "-c", STALL_CODE.format(seconds=seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.strip())
