"""Soak: steady load for minutes with a new model version every 30 s (`--reload-every`).
Memory must stay flat and every request must be answered.

The server (pinned to one core) serves a repository of its own and finds each new version by
itself (its poller, every 2 s, as in production); the old version is removed at the same time.
Single-image requests arrive open-loop at a constant rate (`bench/openloop.py`). RSS is sampled
every second and plotted with the reloads marked; the PNG goes to `--output`. While a version
loads, two are in memory for a moment; the settled figure is RSS just before each reload (the
previous one long finished), the warm-up the first three reloads.

    python bench/soak.py --model-repository models --minutes 10 --output bench-results
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, request_body, rss_mib, served  # noqa: E402
from bench.openloop import OpenLoop, http_request, percentile  # noqa: E402
from bench.reload_memory import newest_version, publish  # noqa: E402

HOST = "127.0.0.1"


async def soak(
    port: int,
    pid: int,
    request: bytes,
    rate: float,
    seconds: float,
    reload_every: float,
    source: Path,
    model_dir: Path,
) -> tuple[list[tuple[float, float]], list[float], list[float], list[object]]:
    rss: list[tuple[float, float]] = []
    reloads: list[float] = []
    settled: list[float] = []
    started = time.monotonic()

    async def sample() -> None:
        while (elapsed := time.monotonic() - started) < seconds:
            rss.append((elapsed, rss_mib(pid)))
            await asyncio.sleep(1)

    async def reload_periodically() -> None:
        version = 1
        while reload_every and time.monotonic() - started + reload_every < seconds:
            await asyncio.sleep(reload_every)
            settled.append(rss_mib(pid))  # the previous reload long finished
            version += 1
            await asyncio.to_thread(publish, source, model_dir, version)
            await asyncio.to_thread(shutil.rmtree, model_dir / str(version - 1))
            reloads.append(time.monotonic() - started)

    generator = OpenLoop(HOST, port, request)
    outcomes, *_ = await asyncio.gather(
        generator.run(rate, seconds), sample(), reload_periodically()
    )
    await generator.close()
    return rss, reloads, settled, outcomes


def settled_growth(settled: list[float]) -> float:
    """RSS before the last reload minus RSS before the fourth (three reloads of warm-up)."""
    return settled[-1] - settled[min(3, len(settled) - 1)] if settled else 0.0


def plot(rss: list[tuple[float, float]], reloads: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot([t / 60 for t, _ in rss], [m for _, m in rss], label="server RSS")
    for i, at in enumerate(reloads):
        axes.axvline(at / 60, color="grey", alpha=0.3, label="new version" if i == 0 else None)
    axes.set_xlabel("minutes")
    axes.set_ylabel("RSS (MiB)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=300, help="requests per second")
    parser.add_argument(
        "--reload-every", type=float, default=30, help="seconds between new versions (0: none)"
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    ensure_model(args.model_repository, args.data_dir)
    source = newest_version(args.model_repository / "mnist")
    repository = Path(tempfile.mkdtemp(prefix="soak-bench-"))
    model_dir = repository / "mnist"
    model_dir.mkdir()
    publish(source, model_dir, 1)
    port = 18801
    request = http_request(HOST, port, "/v1/predict", request_body(1, args.data_dir))
    seconds = args.minutes * 60
    print(
        f"# {time.strftime('%Y-%m-%d')} soak {args.minutes:g} min, {args.rate:g} single-image "
        f"requests/s open-loop, a new version every {args.reload_every:g} s (0: none)",
        flush=True,
    )
    with served(repository, port, "1") as server:
        rss, reloads, settled, outcomes = asyncio.run(
            soak(
                port, server.pid, request, args.rate, seconds, args.reload_every, source, model_dir
            )
        )
    statuses = collections.Counter(o.status for o in outcomes)  # type: ignore[attr-defined]
    latencies = [o.latency * 1000 for o in outcomes if o.status == 200]  # type: ignore[attr-defined]
    warm = [m for t, m in rss if t >= 60] or [m for _, m in rss]
    args.output.mkdir(parents=True, exist_ok=True)
    png = args.output / "soak_rss.png"
    plot(rss, reloads, png, f"RSS over a {args.minutes:g}-minute soak, {len(reloads)} new versions")
    print(
        f"soak minutes={args.minutes:g} reloads={len(reloads)} requests={len(outcomes)} "
        f"statuses={dict(sorted(statuses.items()))} p50_ms={percentile(latencies, 50):.2f} "
        f"p99_ms={percentile(latencies, 99):.2f} rss_start_mib={rss[0][1]:.0f} "
        f"rss_after_1min_mib={warm[0]:.0f} rss_end_mib={rss[-1][1]:.0f} "
        f"rss_max_after_1min_mib={max(warm):.0f} growth_after_1min_mib={warm[-1] - warm[0]:.1f} "
        f"settled_rss_before_each_reload_mib={[round(m) for m in settled]} "
        f"settled_growth_from_reload_4_mib={settled_growth(settled):.1f} "
        f"plot={png}",
        flush=True,
    )
    shutil.rmtree(repository, ignore_errors=True)


if __name__ == "__main__":
    main()
