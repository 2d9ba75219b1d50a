"""Overload, measured open-loop: does the service keep answering near its capacity, in time, and
refuse the rest at once?

The server (`mnist-serve`, defaults: 1 s budget per request) runs pinned to one core, this
script (the load generator) to the other. First the capacity: 32-image requests from 8
closed-loop clients. Then requests arrive at a constant 1x, 2x and 5x that rate for 30 s each
(`bench/openloop.py`; latency counts from when a request was due). For each: accepted
throughput, p50/p99 of the accepted, share refused and how fast refusals come back, RSS. The
capacity is measured again just before each phase (its rate is a multiple of that) and just
after it, and the accepted share is of their mean: over a run of minutes this shared machine's
speed drifts by more than the margins measured here. After the 5x phase, load drops to 0.5x at
once and the p99 of each following half second shows how fast latency recovers. One line per
figure.

    python bench/overload.py --model-repository models
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import (  # noqa: E402
    arguments,
    ensure_model,
    host_stall,
    in_process_ceiling,
    request_body,
    rss_mib,
    served,
)
from bench.openloop import OpenLoop, Outcome, closed_loop, http_request, percentile  # noqa: E402

HOST = "127.0.0.1"


def summarise(
    name: str, outcomes: list[Outcome], seconds: float, rss: float, stall: float = 0.0
) -> str:
    accepted = [o.latency * 1000 for o in outcomes if o.status == 200]
    refused = [o.latency * 1000 for o in outcomes if o.status in (429, 503)]
    other = [o for o in outcomes if o.status not in (200, 429, 503)]
    kinds = sorted({f"{o.status}{':' + o.error if o.error else ''}" for o in other})
    return (
        f"{name} sent={len(outcomes)} accepted_per_s={len(accepted) / seconds:.1f} "
        f"accepted_p50_ms={percentile(accepted, 50):.1f} "
        f"accepted_p99_ms={percentile(accepted, 99):.1f} "
        f"refused_share={len(refused) / max(len(outcomes), 1):.3f} "
        f"refused_p99_ms={percentile(refused, 99):.2f} "
        f"refused_max_ms={max(refused, default=float('nan')):.2f} "
        f"other={len(other)}{' ' + ','.join(kinds) if kinds else ''} rss_mib={rss:.0f} "
        f"generator_send_lag_p99_ms={percentile([o.send_lag * 1000 for o in outcomes], 99):.2f} "
        f"generator_stall_max_ms={stall * 1000:.1f}"
    )


async def phase(
    request: bytes, port: int, rate: float, seconds: float
) -> tuple[list[Outcome], float]:
    """The outcomes, and the generator's own longest stall (`OpenLoop.stall_max`)."""
    generator = OpenLoop(HOST, port, request)
    try:
        return await generator.run(rate, seconds), generator.stall_max
    finally:
        await generator.close()


async def overload_then_recover(
    request: bytes, port: int, rate: float, seconds: float, calm_rate: float
) -> tuple[tuple[list[Outcome], float], list[Outcome]]:
    async def calm_after() -> list[Outcome]:
        await asyncio.sleep(seconds)
        return (await phase(request, port, calm_rate, 3))[0]

    storm, calm = await asyncio.gather(phase(request, port, rate, seconds), calm_after())
    return storm, calm


def measured_capacity(request: bytes, port: int, seconds: float = 8) -> float:
    """Requests/s answered 200 to 8 closed-loop clients."""
    run = asyncio.run(closed_loop(HOST, port, request, 8, seconds))
    return sum(o.status == 200 for o in run) / seconds


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--images", type=int, default=32, help="images per request")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--factors", default="1,2,5")
    parser.add_argument("--runtime", default="auto", help="the server's MNIST_RUNTIME")
    parser.add_argument(
        "--body", choices=["json", "raw"], default="json", help="raw: N x 784 uint8 bytes"
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(args.client_core)})
    ensure_model(args.model_repository, args.data_dir)
    body = request_body(args.images, args.data_dir, args.body)
    port = 18201
    media = "application/octet-stream" if args.body == "raw" else "application/json"
    request = http_request(HOST, port, "/v1/predict", body, content_type=media)
    ceiling = in_process_ceiling(
        args.model_repository, args.server_core, args.images, 5, args.runtime
    )
    print(
        f"# {time.strftime('%Y-%m-%d')} {args.images}-image {args.body} requests, server core "
        f"{args.server_core} ({args.runtime} runtime), generator core {args.client_core}, "
        f"{args.seconds:.0f} s per phase",
        flush=True,
    )
    print(f"ceiling batch={args.images} images_per_s={ceiling:.0f}", flush=True)
    stalls = [host_stall(core, 10) * 1000 for core in (args.server_core, args.client_core)]
    print(
        f"host_stall_max_ms server_core={stalls[0]:.1f} client_core={stalls[1]:.1f} "
        "(a busy loop alone on the core for 10 s: refusals cannot reliably be faster)",
        flush=True,
    )
    with served(args.model_repository, port, args.server_core, runtime=args.runtime) as server:
        asyncio.run(closed_loop(HOST, port, request, 8, 3))  # warm
        capacity = statistics.median(measured_capacity(request, port) for _ in range(3))
        print(
            f"capacity closed_loop_clients=8 requests_per_s={capacity:.1f} "
            f"images_per_s={capacity * args.images:.0f} "
            f"share_of_ceiling={capacity * args.images / ceiling:.2f}",
            flush=True,
        )
        calm_rate = capacity / 2
        baseline, stall = asyncio.run(phase(request, port, calm_rate, 5))
        print(
            summarise("open_loop factor=0.5", baseline, 5, rss_mib(server.pid), stall), flush=True
        )
        baseline_p99 = percentile([o.latency for o in baseline if o.status == 200], 99)
        for factor in (float(f) for f in args.factors.split(",")):
            time.sleep(2)
            before = measured_capacity(request, port)
            time.sleep(1)
            (storm, stall), calm = asyncio.run(
                overload_then_recover(request, port, factor * before, args.seconds, calm_rate)
            )
            name = f"open_loop factor={factor:g}"
            print(summarise(name, storm, args.seconds, rss_mib(server.pid), stall), flush=True)
            after = measured_capacity(request, port)
            accepted = sum(o.status == 200 for o in storm) / args.seconds
            print(
                f"share factor={factor:g} capacity_before={before:.1f} capacity_after={after:.1f} "
                f"accepted_share_of_capacity={accepted / ((before + after) / 2):.3f}",
                flush=True,
            )
            windows = []
            for start in (0.0, 0.5, 1.0, 2.0):
                stop = start + (0.5 if start < 1 else 1.0)
                part = [o.latency for o in calm if o.status == 200 and start <= o.due < stop]
                windows.append((start, percentile(part, 99)))
            recovered = next(
                (
                    start
                    for i, (start, _) in enumerate(windows)
                    if all(p99 <= 2 * baseline_p99 + 0.005 for _, p99 in windows[i:])
                ),
                None,
            )
            print(
                f"recovery after_factor={factor:g} baseline_p99_ms={baseline_p99 * 1000:.1f} "
                + " ".join(f"p99_ms_from_{s:g}s={p * 1000:.1f}" for s, p in windows)
                + f" recovered_within_s={'never' if recovered is None else f'{recovered + 0.5:g}'}",
                flush=True,
            )
        print(f"server peak_rss_mib={rss_mib(server.pid, 'VmHWM'):.0f}", flush=True)


if __name__ == "__main__":
    main()
