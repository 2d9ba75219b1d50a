"""gRPC serving figures: KServe V2 ModelInfer with raw contents, next to the REST JSON figure and
the in-process ceiling of the same run.

    python bench/grpc_benchmark.py --model-repository models   # needs wrk; h2load if installed

The gRPC load generator, pinned to the other core, sends the same pre-serialised request back to
back for `--seconds` on one HTTP/2 connection (as one client channel does), `concurrency` calls
at a time. It is h2load (Debian's nghttp2-client) when installed: compiled, like wrk on the REST
side. The `grpc.aio` client (`--generator python`) gives the same throughput (A B A B against
one server, 2026-11-25: 2,935 vs 2,845 requests/s at concurrency 64, 6,189 vs 6,272 images/s
with 32-image requests) but adds its own ~0.12 ms to every call (p50 at concurrency 1: 0.67 vs
0.55 ms), which wrk does not add to the REST figure. h2load reads HTTP statuses, not gRPC's,
so every run also counts the server's `grpc_requests_total` by code, and any call not OK is
reported as an error.

Figures: single images at concurrency 1 and 64, 32-image requests at concurrency 8; REST: the
same single image as JSON to `/v1/predict` with wrk. Medians of `--repeats` runs, gRPC and REST
alternated.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import (  # noqa: E402
    arguments,
    ensure_model,
    in_process_ceiling,
    request_body,
    served,
    wrk,
)
from bench.openloop import percentile  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
LOADS = (("single", 1, 1), ("single", 1, 64), ("batch32", 32, 8))

CLIENT = r"""
import asyncio, json, sys, time
import grpc

target, body_file = sys.argv[1], sys.argv[2]
concurrency, seconds = int(sys.argv[3]), float(sys.argv[4])
body = open(body_file, "rb").read()

async def main():
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
        )
        await call(body)  # connect
        latencies, errors = [], 0
        end = time.perf_counter() + seconds

        async def worker():
            nonlocal errors
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    await call(body)
                    latencies.append(time.perf_counter() - started)
                except grpc.RpcError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    print(json.dumps({
        "requests": len(latencies), "seconds": elapsed, "errors": errors,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }))

asyncio.run(main())
"""


def infer_request(images: int, data_dir: str | None) -> bytes:
    """A serialised ModelInferRequest with raw FP32 contents of real test digits."""
    from tritonclient.grpc import service_pb2

    from training.data import load_mnist

    digits = load_mnist(data_dir).test_images[:images].astype("<f4")
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP32", shape=[images, 28, 28, 1])
    request.raw_input_contents.append(np.ascontiguousarray(digits).tobytes())
    return bytes(request.SerializeToString())


def python_load(
    target: str, body: Path, concurrency: int, seconds: int, core: str
) -> dict[str, float]:
    command = ["taskset", "-c", core, sys.executable, "-c", CLIENT, target, str(body),
               str(concurrency), str(seconds)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def h2load(target: str, body: Path, concurrency: int, seconds: int, core: str) -> dict[str, float]:
    """The same calls from h2load over h2c: the message in gRPC's framing (a flag byte and a
    4-byte length), latencies from its per-request log."""
    message = body.read_bytes()
    framed = body.with_suffix(".grpc")
    framed.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
    log = body.with_suffix(".log")
    log.unlink(missing_ok=True)  # h2load appends
    command = ["taskset", "-c", core, "h2load", "-c", "1", "-m", str(concurrency)]
    command += ["-D", str(seconds), "--warm-up-time", "1", "-d", str(framed), f"--log-file={log}"]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    command += [f"http://{target}{METHOD}"]
    subprocess.run(command, check=True, capture_output=True)
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    latencies = [int(row[2]) / 1000 for row in rows]
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "errors": sum(row[1] != "200" for row in rows),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def calls_not_ok(metrics_url: str) -> int:
    """ModelInfer calls the server answered with a code other than OK, so far."""
    total = 0
    for line in httpx.get(metrics_url).text.splitlines():
        if line.startswith("grpc_requests_total{") and METHOD in line and 'code="OK"' not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--generator",
        choices=("auto", "h2load", "python"),
        default="auto",
        help="gRPC load generator; auto: h2load when installed",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    generator = args.generator
    if generator == "auto":
        generator = "h2load" if shutil.which("h2load") else "python"
    if generator == "h2load" and shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install nghttp2-client")
    grpc_load = h2load if generator == "h2load" else python_load
    ensure_model(args.model_repository, args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="grpc-bench-"))
    bodies = {}
    for images in (1, 32):
        bodies[images] = work / f"grpc-{images}.bin"
        bodies[images].write_bytes(infer_request(images, args.data_dir))
    json_body = work / "rest-1.json"
    json_body.write_bytes(request_body(1, args.data_dir))
    for batch in (1, 32):
        ceiling = in_process_ceiling(args.model_repository.resolve(), args.server_core, batch, 5)
        print(f"ceiling batch={batch} images_per_s={ceiling:.0f}", flush=True)
    print(
        f"# {time.strftime('%Y-%m-%d')} {args.seconds} s x {args.repeats}, medians, "
        f"gRPC load from {generator}",
        flush=True,
    )

    grpc_port = 18510
    with served(
        args.model_repository.resolve(), 18105, args.server_core, grpc_port=str(grpc_port)
    ) as server:
        target = f"127.0.0.1:{grpc_port}"
        for name, images, concurrency in LOADS:
            grpc_runs, rest_runs = [], []
            for _ in range(args.repeats):
                refused_before = calls_not_ok(server.url + "/metrics")
                run = grpc_load(target, bodies[images], concurrency, args.seconds, args.client_core)
                run["errors"] += calls_not_ok(server.url + "/metrics") - refused_before
                grpc_runs.append(run)
                if images == 1:
                    rest_runs.append(
                        wrk(
                            server.url + "/v1/predict",
                            json_body,
                            concurrency,
                            args.seconds,
                            args.client_core,
                        )
                    )
            rps = statistics.median(r["requests"] / r["seconds"] for r in grpc_runs)
            print(
                f"grpc scenario={name} concurrency={concurrency} requests_per_s={rps:.0f} "
                f"images_per_s={rps * images:.0f} "
                f"p50_ms={statistics.median(r['p50_ms'] for r in grpc_runs):.2f} "
                f"p99_ms={statistics.median(r['p99_ms'] for r in grpc_runs):.2f} "
                f"errors={sum(int(r['errors']) for r in grpc_runs)}",
                flush=True,
            )
            if rest_runs:
                rest = statistics.median(r["requests"] / r["seconds"] for r in rest_runs)
                print(
                    f"rest scenario={name} concurrency={concurrency} requests_per_s={rest:.0f} "
                    f"p50_ms={statistics.median(r['p50_us'] for r in rest_runs) / 1000:.2f} "
                    f"p99_ms={statistics.median(r['p99_us'] for r in rest_runs) / 1000:.2f} "
                    f"grpc_vs_rest={rps / rest:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
