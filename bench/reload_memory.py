"""Memory over many hot reloads: does every new version cost RSS that is never given back?

The server (pinned to one core) serves a repository of its own; each reload publishes the model
as a new version (copied beside, then one rename, as the exporter does), removes the old one,
and asks the server to look now (`POST /v1/admin/reload`). RSS is read from /proc after each
reload; growth is counted from the end of the warm-up reloads. A line every `--every` reloads,
then the summary.

    python bench/reload_memory.py --model-repository models --reloads 200
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, rss_mib, served  # noqa: E402


def newest_version(model_dir: Path) -> Path:
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def publish(source: Path, model_dir: Path, version: int) -> None:
    staging = model_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(model_dir / str(version))


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--reloads", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    source = newest_version(args.model_repository / "mnist")
    repository = Path(tempfile.mkdtemp(prefix="reload-bench-"))
    model_dir = repository / "mnist"
    model_dir.mkdir()
    publish(source, model_dir, 1)
    print(f"# {time.strftime('%Y-%m-%d')} {args.reloads} reloads of {source}", flush=True)
    with (
        served(repository, 18501, "1", model_poll_seconds="3600") as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        samples = [(0, rss_mib(server.pid))]
        started = time.monotonic()
        for version in range(2, args.reloads + 2):
            publish(source, model_dir, version)
            shutil.rmtree(model_dir / str(version - 1))
            served_now = http.post("/v1/admin/reload").json()["served_versions"]
            if served_now != [version]:
                sys.exit(f"reload {version - 1}: serving {served_now}, expected [{version}]")
            samples.append((version - 1, rss_mib(server.pid)))
            if (version - 1) % args.every == 0:
                print(f"reloads={version - 1} rss_mib={samples[-1][1]:.1f}", flush=True)
        seconds = time.monotonic() - started
    after_warmup = samples[min(args.warmup, len(samples) - 1)][1]
    growth = samples[-1][1] - after_warmup
    reloads_counted = max(len(samples) - 1 - args.warmup, 1)
    print(
        f"reload_memory reloads={args.reloads} rss_start_mib={samples[0][1]:.1f} "
        f"rss_after_warmup_mib={after_warmup:.1f} rss_end_mib={samples[-1][1]:.1f} "
        f"growth_after_warmup_mib={growth:.1f} "
        f"per_reload_kib={growth * 1024 / reloads_counted:.1f} "
        f"seconds_per_reload={seconds / args.reloads:.2f}",
        flush=True,
    )
    shutil.rmtree(repository, ignore_errors=True)


if __name__ == "__main__":
    main()
