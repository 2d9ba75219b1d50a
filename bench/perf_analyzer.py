"""Triton's own load generator, perf_analyzer, against this server over HTTP and gRPC.

    apt-get install libb64-0d     # perf_analyzer's one system library beyond glibc
    python bench/perf_analyzer.py --model-repository models

perf_analyzer is how Triton-protocol servers are compared: it reads the model's metadata,
configuration (`max_batch_size`, the input's dims) and statistics through the protocol, sends real
test digits at each concurrency, and splits the server's time into queue and model time from the
statistics it reads before and after each measurement. Before the model configuration and
statistics extensions it stopped at "failed to get model config".

The binary comes from the last `tritonclient` wheel that shipped it (2.34.0, Linux x86-64) with
the CUDA runtime library it links (from NVIDIA's `nvidia-cuda-runtime-cu12` wheel; nothing here
uses a GPU), both fetched with pip into a cache directory outside the project's environment.
The server is pinned to `--server-core`, perf_analyzer to `--client-core`, and the model's
in-process ceiling of the same run is printed beside every figure.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, in_process_ceiling, served  # noqa: E402

WHEELS = {
    "perf_analyzer": ("tritonclient[all]==2.34.0", "tritonclient-*.whl", "/bin/perf_analyzer"),
    "libcudart.so.12": (
        "nvidia-cuda-runtime-cu12==12.9.79",
        "nvidia_cuda_runtime_cu12-*.whl",
        "/lib/libcudart.so.12",
    ),
}
CACHE = Path.home() / ".cache" / "mnist-serving" / "perf-analyzer"


def fetch(cache: Path) -> Path:
    """perf_analyzer and the library it links, unpacked into `cache` once; the binary's path."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, (requirement, pattern, member_end) in WHEELS.items():
        target = cache / name
        if target.exists():
            continue
        wheels = cache / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        only = ["--only-binary=:all:", "--platform", "manylinux2014_x86_64"]
        subprocess.run([*pip, *only, "-d", str(wheels), requirement], check=True)
        wheel = next(wheels.glob(pattern))
        with zipfile.ZipFile(wheel) as archive:
            member = next(m for m in archive.namelist() if m.endswith(member_end))
            with archive.open(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        target.chmod(0o755)
    return cache / "perf_analyzer"


def input_data(data_dir: str | None, path: Path, count: int = 256) -> None:
    """Real test digits in perf_analyzer's input format: one 28x28x1 image per entry."""
    from training.data import load_mnist

    digits = load_mnist(data_dir).test_images[:count].astype(float)
    entries = [{"image": {"content": d.reshape(-1).tolist(), "shape": [28, 28, 1]}} for d in digits]
    path.write_text(json.dumps({"data": entries}))


def run(
    binary: Path,
    protocol: str,
    port: int,
    batch: int,
    concurrency: str,
    data: Path,
    core: str,
    seconds: int,
) -> list[dict[str, str]]:
    report = Path(tempfile.mkstemp(suffix=".csv")[1])
    command = [
        "taskset", "-c", core, str(binary),
        "-m", "mnist", "-u", f"127.0.0.1:{port}", "-i", protocol, "-b", str(batch),
        "--concurrency-range", concurrency, "--input-data", str(data),
        "--measurement-interval", str(seconds * 1000), "-f", str(report),
    ]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed:\n{finished.stdout[-2000:]}{finished.stderr}")
    with report.open() as rows:
        return sorted(csv.DictReader(rows), key=lambda row: int(row["Concurrency"]))


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--concurrency", default="1:8:7", help="perf_analyzer's range")
    parser.add_argument("--batches", default="1,32", help="images per request")
    parser.add_argument("--seconds", type=int, default=5, help="each measurement window")
    parser.add_argument("--cache", type=Path, default=CACHE)
    options = parser.parse_args()
    if (
        shutil.which("ldconfig")
        and "libb64.so.0d"
        not in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    ):
        raise SystemExit("perf_analyzer needs libb64: apt-get install libb64-0d")
    ensure_model(options.model_repository, options.data_dir)
    binary = fetch(options.cache)
    data = Path(tempfile.mkstemp(suffix=".json")[1])
    input_data(options.data_dir, data)
    batches = [int(b) for b in options.batches.split(",")]
    ceilings = {
        b: in_process_ceiling(options.model_repository, options.server_core, b, 3) for b in batches
    }
    print(f"# in-process ceiling, images/s: {ceilings}")
    print(
        "| protocol | images/request | concurrency | images/s | % of ceiling | p50 | p99 | "
        "server queue | server model |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with served(options.model_repository, 18620, options.server_core, grpc_port="18621"):
        for protocol, port in (("http", 18620), ("grpc", 18621)):
            for batch in batches:
                rows = run(
                    binary,
                    protocol,
                    port,
                    batch,
                    options.concurrency,
                    data,
                    options.client_core,
                    options.seconds,
                )
                for row in rows:
                    images = float(row["Inferences/Second"])
                    print(
                        f"| {protocol} | {batch} | {row['Concurrency']} | {images:,.0f} | "
                        f"{images / ceilings[batch]:.0%} | {int(row['p50 latency']) / 1000:.2f} ms"
                        f" | {int(row['p99 latency']) / 1000:.2f} ms | "
                        f"{int(row['Server Queue']) / 1000:.2f} ms | "
                        f"{int(row['Server Compute Infer']) / 1000:.2f} ms |"
                    )


if __name__ == "__main__":
    main()
