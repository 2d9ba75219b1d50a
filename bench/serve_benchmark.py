"""Serving figures: requests/s, images/s and p50/p99 latency over real HTTP, batching on and off,
next to the model's own in-process ceiling.

The server (`mnist-serve`, one worker) runs pinned to one core and wrk, the load generator, to
another, so they do not compete. Each figure is measured `--repeats` times, alternating the
batching-on and batching-off servers (A B A B), and the median is printed, one line per figure.

    python bench/serve_benchmark.py --model-repository models   # needs: apt-get install wrk

Without a model in the repository, one epoch of the default architecture is trained on 5,000
images first: throughput depends on the architecture, not on how well it was trained.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = [
    # (name, images per request, concurrency)
    ("single", 1, 1),
    ("single", 1, 8),
    ("single", 1, 64),
    ("batch32", 32, 8),
]


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


def request_body(images: int, data_dir: str | None) -> bytes:
    """Real test digits, as a client would send them: 28x28 nested lists of integers."""
    sys.path.insert(0, str(HERE.parent))
    from training.data import load_mnist

    digits = load_mnist(data_dir).test_images[:images]
    return json.dumps({"instances": digits.tolist()}).encode()


@contextlib.contextmanager
def server(
    repository: Path, port: int, core: str, batching: bool, access_log: bool = True
) -> Iterator[str]:
    """The service as users run it (defaults, access log included), its log in a temp file."""
    env = {
        **os.environ,
        "MNIST_MODEL_REPOSITORY": str(repository),
        "MNIST_PORT": str(port),
        "MNIST_BATCHING": str(batching).lower(),
        "MNIST_ACCESS_LOG": str(access_log).lower(),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log_path = Path(tempfile.gettempdir()) / f"bench-server-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        ["taskset", "-c", core, sys.executable, "-m", "service"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"server on {port} did not become ready; see {log_path}")
            time.sleep(0.2)
        yield url
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_kib = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        )
        print(
            f"server port={port} batching={'on' if batching else 'off'} "
            f"peak_rss_mib={rss_kib / 1024:.0f}",
            flush=True,
        )
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def wrk(url: str, body_file: Path, concurrency: int, seconds: int, core: str) -> dict[str, float]:
    command = [
        "taskset",
        "-c",
        core,
        "wrk",
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "wrk_report.lua"),
        url + "/v1/predict",
        "--",
        str(body_file),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    summary: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return summary


CEILING_CODE = """
import time, numpy as np, tensorflow as tf
from pathlib import Path
model_dir = Path({model_dir!r})
newest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
signature = tf.saved_model.load(str(model_dir / str(newest))).signatures["serving_default"]
x = tf.constant(np.random.default_rng(0).integers(0, 256, ({batch}, 28, 28, 1)), tf.float32)
for _ in range(20):
    signature(image=x)
calls, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    signature(image=x)["probabilities"].numpy()
    calls += 1
print(calls * {batch} / (time.perf_counter() - start))
"""


def in_process_ceiling(repository: Path, core: str, batch: int, seconds: float) -> float:
    """Images/s of the SavedModel signature called directly, on the server's core(s)."""
    code = CEILING_CODE.format(model_dir=str(repository / "mnist"), batch=batch, seconds=seconds)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        ["taskset", "-c", core, sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-core", default="1")
    parser.add_argument("--client-core", default="0")
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="serve without the per-request JSON log line (on by default, as in production)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    ensure_model(args.model_repository, args.data_dir)

    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    bodies = {}
    for images in sorted({n for _, n, _ in SCENARIOS}):
        bodies[images] = workdir / f"body-{images}.json"
        bodies[images].write_bytes(request_body(images, args.data_dir))

    print(
        f"# {time.strftime('%Y-%m-%d')} server core {args.server_core}, wrk core "
        f"{args.client_core}, {args.seconds} s x {args.repeats} per figure, medians, "
        f"access log {'on' if args.access_log else 'off'}",
        flush=True,
    )
    for batch in (1, 32, 256):
        ceiling = [
            in_process_ceiling(args.model_repository, args.server_core, batch, 5)
            for _ in range(args.repeats)
        ]
        print(
            f"ceiling batch={batch} cores={args.server_core} "
            f"images_per_s={statistics.median(ceiling):.0f}",
            flush=True,
        )

    results: dict[tuple[str, int, bool], list[dict[str, float]]] = {}
    with (
        server(args.model_repository, 18101, args.server_core, True, args.access_log) as on,
        server(args.model_repository, 18102, args.server_core, False, args.access_log) as off,
    ):
        for name, images, concurrency in SCENARIOS:
            for url in (on, off):  # warm both
                wrk(url, bodies[images], concurrency, 2, args.client_core)
            for _ in range(args.repeats):
                for batching, url in ((True, on), (False, off)):
                    run = wrk(url, bodies[images], concurrency, args.seconds, args.client_core)
                    results.setdefault((name, concurrency, batching), []).append(run)
            for batching in (True, False):
                runs = results[(name, concurrency, batching)]
                rps = statistics.median(r["requests"] / r["seconds"] for r in runs)
                print(
                    f"http scenario={name} images_per_request={images} concurrency={concurrency} "
                    f"batching={'on' if batching else 'off'} requests_per_s={rps:.0f} "
                    f"images_per_s={rps * images:.0f} "
                    f"p50_ms={statistics.median(r['p50_us'] for r in runs) / 1000:.2f} "
                    f"p99_ms={statistics.median(r['p99_us'] for r in runs) / 1000:.2f} "
                    f"errors={sum(r['errors'] for r in runs):.0f}",
                    flush=True,
                )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
