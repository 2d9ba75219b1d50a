"""A flood of photo uploads: are they refused at once, or queued for seconds while memory grows?

The server (defaults: 1 s budget) runs pinned to one core, this script to the other. `--clients`
closed-loop clients each send the same photo (a 12-megapixel JPEG by default: a textured sheet
with a dark stroke, as a phone takes it) to `/v1/predict/image` for `--seconds`. Per status: the
count and p50/p99/max latency; the answered photos per second; the server's RSS and its peak.
`--code DIR` runs another checkout of the project (a worktree of an older commit, for A/B runs).

    python bench/upload_flood.py --model-repository models
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, rss_mib, served  # noqa: E402
from bench.openloop import percentile  # noqa: E402


def photo(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sheet = (200 + rng.integers(0, 40, (height, width, 3))).astype(np.uint8)
    stroke = max(4, width // 40)
    sheet[height // 5 : 4 * height // 5, width // 2 - stroke : width // 2 + stroke] = 20
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


CLIENT = r"""
import asyncio, json, sys, time
import httpx
url, body_file, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
body = open(body_file, "rb").read()
headers = {"Content-Type": "image/jpeg"}
outcomes = []
async def main():
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one():
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    answer = await client.post(url, content=body, headers=headers)
                    status = answer.status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                outcomes.append((status, time.monotonic() - started))
        await asyncio.gather(*[one() for _ in range(clients)])
asyncio.run(main())
print(json.dumps(outcomes))
"""


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--size", default="4000x3000", help="the photo's width x height")
    parser.add_argument("--code", type=Path, help="another checkout to serve from")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    width, height = (int(side) for side in args.size.split("x"))
    body_file = Path(f"/tmp/upload-flood-{os.getpid()}.jpg")
    body = photo(width, height)
    body_file.write_bytes(body)
    try:
        with served(
            args.model_repository.resolve(), 18105, args.server_core, code=args.code
        ) as server:
            before = rss_mib(server.pid)
            command = ["taskset", "-c", args.client_core, sys.executable, "-c", CLIENT,
                       server.url + "/v1/predict/image", str(body_file), str(args.clients),
                       str(args.seconds)]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            after, peak = rss_mib(server.pid), rss_mib(server.pid, "VmHWM")
    finally:
        body_file.unlink(missing_ok=True)
    by_status: dict[object, list[float]] = defaultdict(list)
    for status, seconds in json.loads(output):
        by_status[status].append(seconds * 1000)
    print(
        f"# {time.strftime('%Y-%m-%d')} {width}x{height} JPEG of {len(body):,} bytes, "
        f"{args.clients} clients, {args.seconds:g} s"
    )
    for status, latencies in sorted(by_status.items(), key=lambda item: str(item[0])):
        print(
            f"status={status} count={len(latencies)} p50_ms={percentile(latencies, 50):.0f} "
            f"p99_ms={percentile(latencies, 99):.0f} max_ms={max(latencies):.0f}"
        )
    print(f"answered_per_s={len(by_status.get(200, [])) / args.seconds:.1f}")
    print(f"server rss_mib before={before:.0f} after={after:.0f} peak={peak:.0f}")


if __name__ == "__main__":
    main()
