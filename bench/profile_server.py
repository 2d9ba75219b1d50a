"""Where a served request's time goes: py-spy samples `mnist-serve` (as users run it: access log,
metrics and an API key on) while wrk loads it, and the samples are summed by what the code does.

    python bench/profile_server.py --model-repository models --images 1 --concurrency 64

The server runs pinned to one core and wrk to another; py-spy (a dev dependency) samples every
thread of the server without stopping it. Shares are of the samples in which a thread was busy, so
the model thread and the event loop add up to the one core they share. `--raw FILE` keeps the
samples (py-spy's collapsed stacks, one thread per stack) for a flame graph.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, request_body, served, wrk  # noqa: E402

API_KEY = "profile-key"
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):\d+\)$")
# (where the leaf frame's file lies, what the time is spent on); the first match wins
MAIN_THREAD_PARTS = [
    ("asyncio/runners.py", "event loop: sockets, polling, callbacks (uvloop, native)"),
    ("uvicorn/", "HTTP protocol (uvicorn, httptools)"),
    ("starlette/", "web framework (Starlette, FastAPI)"),
    ("fastapi/", "web framework (Starlette, FastAPI)"),
    ("pydantic", "web framework (Starlette, FastAPI)"),
    ("service/fastjson.py", "decoding the body"),
    ("service/decoding.py", "decoding the body"),
    ("service/binary.py", "decoding the body"),
    ("service/protocols/body.py", "decoding the body"),
    ("simdjson", "decoding the body"),
    ("service/logs.py", "access log"),
    ("logging/", "access log"),
    ("service/metrics.py", "metrics"),
    ("prometheus_client/", "metrics"),
    ("service/batcher.py", "batcher"),
    ("concurrent/futures/", "batcher"),  # handing a batch to the model thread
    ("service/", "our request path (routes, data plane, middleware, auth)"),
    ("numpy/", "numpy"),
    ("asyncio/", "asyncio (tasks, futures, timers)"),
]


def part_of(thread: str, leaf: str) -> str:
    match = FRAME.match(leaf)
    path = match.group("path") if match else ""
    if "MainThread" not in thread:
        if "tensorflow/" in path or "tflite" in path:
            return "model call (the runtime's own work)"
        return "model thread: hand-off (thread pool, futures, GIL)"
    return next((part for where, part in MAIN_THREAD_PARTS if where in path), "other")


def summarise(samples: Path, top: int) -> list[str]:
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if not frames or not count.isdigit():  # a stack py-spy cut short
            continue
        parts[part_of(thread, frames[-1])] += int(count)
        match = FRAME.match(frames[-1])
        where = match.group("path").split("site-packages/")[-1] if match else ""
        leaves[f"{match.group('function') if match else frames[-1]} ({where})"] += int(count)
    total = sum(parts.values())
    lines = [f"samples={total} (busy threads)"]
    lines += [f"part {share / total:6.1%}  {part}" for part, share in parts.most_common()]
    lines += [f"leaf {share / total:6.1%}  {leaf}" for leaf, share in leaves.most_common(top)]
    return lines


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--body", choices=["json", "raw"], default="json")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15, help="leaf functions listed")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists() or shutil.which("wrk") is None:
        sys.exit("needs py-spy (a dev dependency: make install) and wrk (apt-get install wrk)")
    ensure_model(args.model_repository, args.data_dir)
    workdir = Path(tempfile.mkdtemp(prefix="profile-"))
    body = workdir / "body"
    body.write_bytes(request_body(args.images, args.data_dir, args.body))
    content_type = "application/json" if args.body == "json" else "application/octet-stream"
    samples = args.raw or workdir / "samples.txt"
    key = (f"Authorization: Bearer {API_KEY}",)

    with served(args.model_repository.resolve(), 18601, args.server_core, api_keys=API_KEY) as s:
        url = s.url + "/v1/predict"
        wrk(url, body, args.concurrency, 3, args.client_core, content_type, key)  # warm up
        record = [py_spy, "record", "--pid", str(s.pid), "--duration", str(args.seconds + 1)]
        record += ["--rate", str(args.rate), "--format", "raw", "--threads", "--nonblocking"]
        spy = subprocess.Popen(
            [*record, "--output", str(samples)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attached
        load = wrk(url, body, args.concurrency, args.seconds, args.client_core, content_type, key)
        spy.wait()
    answered = (load["requests"] - load["non_2xx"]) / load["seconds"]
    print(
        f"# {time.strftime('%Y-%m-%d')} {args.images} image(s) per request, {args.body} body, "
        f"concurrency {args.concurrency}, {args.seconds} s, server core {args.server_core}",
        flush=True,
    )
    print(
        f"load requests_per_s={answered:.0f} images_per_s={answered * args.images:.0f} "
        f"p50_ms={load['p50_us'] / 1000:.2f} p99_ms={load['p99_us'] / 1000:.2f} "
        f"errors={load['errors']:.0f}",
        flush=True,
    )
    for line in summarise(samples, args.top):
        print(line, flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
