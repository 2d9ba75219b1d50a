"""What tracing costs: the same serving load on three servers side by side (A B C, B C A, ...).

    python bench/tracing_cost.py --model-repository models --base HEAD~1   # needs wrk

- `before`: the code of `--base` (a git worktree of that commit, run from this environment):
  the serving figures before tracing existed;
- `off`: this code with tracing off (the default);
- `on`: this code tracing every request to an OTLP/HTTP sink in this process (it answers 200
  and drops the spans, so the figure is the server's own cost of making and exporting them);
- `sampled`: the same, keeping one trace in ten (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
  `OTEL_TRACES_SAMPLER_ARG=0.1`).

Single images at concurrency 64 and 1 (JSON to `/v1/predict`), servers pinned to one core and
wrk to the other, medians of `--repeats` runs, with the in-process ceiling of the same run.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.harness import arguments, ensure_model, in_process_ceiling, request_body, served, wrk  # noqa: E402


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def otlp_sink(port: int) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tracing-base-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       check=False, capture_output=True)  # fmt: skip


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Set for the servers started inside (each copies the environment when it starts)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--base", default="HEAD~1", help="the commit to compare with")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1])
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["before", "off", "on", "sampled"],
        choices=["before", "off", "on", "sampled"],
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    ensure_model(args.model_repository, args.data_dir)
    body = Path(tempfile.mkdtemp(prefix="tracing-bench-")) / "body-1.json"
    body.write_bytes(request_body(1, args.data_dir))
    ceiling = in_process_ceiling(args.model_repository, args.server_core, 1, 5)
    print(f"# {time.strftime('%Y-%m-%d')} base {args.base}, {args.seconds} s x {args.repeats}")
    print(f"ceiling batch=1 images_per_s={ceiling:.0f}", flush=True)

    core, repository = args.server_core, args.model_repository.resolve()
    with (
        worktree(args.base) as base,
        otlp_sink(18119) as sink,
        served(repository, 18116, core, code=base) as before,
        served(repository, 18117, core) as off,
        served(repository, 18118, core, otel_endpoint=sink) as on,
        environment(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1"),
        served(repository, 18120, core, otel_endpoint=sink) as sampled,
    ):
        everything = {"before": before.url, "off": off.url, "on": on.url, "sampled": sampled.url}
        servers = {name: everything[name] + "/v1/predict" for name in args.servers}
        for concurrency in args.concurrency:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for url in servers.values():
                wrk(url, body, concurrency, 2, args.client_core)  # warm up
            names = list(servers)
            for round_ in range(args.repeats):
                # A B C, then B C A, ...: no server always runs first (or after a given one).
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    run = wrk(servers[name], body, concurrency, args.seconds, args.client_core)
                    runs[name].append(run)
            rps = {
                n: statistics.median(r["requests"] / r["seconds"] for r in v)
                for n, v in runs.items()
            }
            for name, measured in runs.items():
                print(
                    f"tracing={name} concurrency={concurrency} requests_per_s={rps[name]:.0f} "
                    f"vs_first={rps[name] / rps[names[0]]:.3f} "
                    f"runs={'/'.join(str(round(r['requests'] / r['seconds'])) for r in measured)} "
                    f"p50_ms={statistics.median(r['p50_us'] for r in measured) / 1000:.2f} "
                    f"p99_ms={statistics.median(r['p99_us'] for r in measured) / 1000:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
