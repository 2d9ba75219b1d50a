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

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import (  # noqa: E402
    arguments,
    ensure_model,
    in_process_ceiling,
    request_body,
    rss_mib,
    served,
    wrk,
)

SCENARIOS = [
    # (name, images per request, concurrency)
    ("single", 1, 1),
    ("single", 1, 8),
    ("single", 1, 64),
    ("batch32", 32, 8),
]


CONTENT_TYPES = {"json": "application/json", "raw": "application/octet-stream"}
COMPARISONS = {
    # --compare: the two servers measured side by side, A B A B
    "batching": (("batching=on", {"batching": "true"}), ("batching=off", {"batching": "false"})),
    "runtime": (
        ("runtime=savedmodel", {"runtime": "savedmodel"}),
        ("runtime=tflite", {"runtime": "tflite"}),
    ),
}


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="serve without the per-request JSON log line (on by default, as in production)",
    )
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="batching")
    parser.add_argument(
        "--body", choices=sorted(CONTENT_TYPES), default="json", help="raw: N x 784 uint8 bytes"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    ensure_model(args.model_repository, args.data_dir)

    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    bodies = {}
    for images in sorted({n for _, n, _ in SCENARIOS}):
        bodies[images] = workdir / f"body-{images}.json"
        bodies[images].write_bytes(request_body(images, args.data_dir, args.body))
    content_type = CONTENT_TYPES[args.body]
    (name_a, settings_a), (name_b, settings_b) = COMPARISONS[args.compare]

    print(
        f"# {time.strftime('%Y-%m-%d')} server core {args.server_core}, wrk core "
        f"{args.client_core}, {args.seconds} s x {args.repeats} per figure, medians, "
        f"access log {'on' if args.access_log else 'off'}, {args.body} bodies",
        flush=True,
    )
    runtimes = sorted({s.get("runtime", "auto") for s in (settings_a, settings_b)})
    for batch in (1, 32, 256):
        for runtime in runtimes:
            ceiling = [
                in_process_ceiling(args.model_repository, args.server_core, batch, 5, runtime)
                for _ in range(args.repeats)
            ]
            print(
                f"ceiling runtime={runtime} batch={batch} cores={args.server_core} "
                f"images_per_s={statistics.median(ceiling):.0f}",
                flush=True,
            )

    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    log_on = str(args.access_log).lower()
    with (
        served(
            args.model_repository, 18101, args.server_core, access_log=log_on, **settings_a
        ) as server_a,
        served(
            args.model_repository, 18102, args.server_core, access_log=log_on, **settings_b
        ) as server_b,
    ):
        urls = {name_a: server_a.url, name_b: server_b.url}
        for name, images, concurrency in SCENARIOS:
            for url in urls.values():  # warm both
                wrk(
                    url + "/v1/predict",
                    bodies[images],
                    concurrency,
                    2,
                    args.client_core,
                    content_type,
                )
            for _ in range(args.repeats):
                for variant, url in urls.items():
                    run = wrk(
                        url + "/v1/predict",
                        bodies[images],
                        concurrency,
                        args.seconds,
                        args.client_core,
                        content_type,
                    )
                    results.setdefault((name, concurrency, variant), []).append(run)
            for variant in urls:
                runs = results[(name, concurrency, variant)]
                rps = statistics.median(r["requests"] / r["seconds"] for r in runs)
                print(
                    f"http scenario={name} images_per_request={images} concurrency={concurrency} "
                    f"{variant} requests_per_s={rps:.0f} "
                    f"images_per_s={rps * images:.0f} "
                    f"p50_ms={statistics.median(r['p50_us'] for r in runs) / 1000:.2f} "
                    f"p99_ms={statistics.median(r['p99_us'] for r in runs) / 1000:.2f} "
                    f"errors={sum(r['errors'] for r in runs):.0f}",
                    flush=True,
                )
        for variant, handle in ((name_a, server_a), (name_b, server_b)):
            print(
                f"server {variant} peak_rss_mib={rss_mib(handle.pid, 'VmHWM'):.0f}",
                flush=True,
            )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
