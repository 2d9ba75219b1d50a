"""A flood of photo uploads: are they refused at once, or queued for seconds while memory grows?

The server (defaults: 1 s budget) runs pinned to one core, this script to the other. `--clients`
closed-loop clients each send the same photo (a 12-megapixel JPEG by default: a textured sheet
with a dark stroke, as a phone takes it) to `/v1/predict/image` for `--seconds`. Per status: the
count and p50/p99/max latency; the answered photos per second; the server's RSS and its peak.
`--code DIR` runs another checkout of the project (a worktree of an older commit, for A/B runs).

`--batch-clients K` makes K of the clients send `--batch-images` photos per request (multipart)
instead of one; `--retry-after` makes every client wait as long as a 503's `Retry-After` before
its next request, as `mnist_client` does. Then the photos answered per second count every photo
of an answered request, and photos that were prepared and then missed their deadline (504) are
counted as wasted.

    python bench/upload_flood.py --model-repository models
    python bench/upload_flood.py --model-repository models --clients 6 --batch-clients 2 \
        --size 1600x1200 --retry-after --seconds 30
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
batch_clients, batch_images, retry_after = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
body = open(body_file, "rb").read()
headers = {"Content-Type": "image/jpeg"}
files = [("file", (f"{index}.jpg", body, "image/jpeg")) for index in range(batch_images)]
outcomes = []
async def main():
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(photos):
            while time.monotonic() < end:
                started = time.monotonic()
                wait = 0.0
                try:
                    if photos == 1:
                        answer = await client.post(url, content=body, headers=headers)
                    else:
                        answer = await client.post(url, files=files)
                    status = answer.status_code
                    if status == 503 and retry_after:
                        wait = float(answer.headers.get("Retry-After", "1"))
                except httpx.HTTPError as error:
                    status = type(error).__name__
                outcomes.append((photos, status, time.monotonic() - started))
                await asyncio.sleep(wait)
        await asyncio.gather(
            *[one(batch_images if index < batch_clients else 1) for index in range(clients)]
        )
asyncio.run(main())
print(json.dumps(outcomes))
"""


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--size", default="4000x3000", help="the photo's width x height")
    parser.add_argument("--code", type=Path, help="another checkout to serve from")
    parser.add_argument("--batch-clients", type=int, default=0)
    parser.add_argument("--batch-images", type=int, default=12)
    parser.add_argument("--retry-after", action="store_true")
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
                       str(args.seconds), str(args.batch_clients), str(args.batch_images),
                       "1" if args.retry_after else "0"]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            after, peak = rss_mib(server.pid), rss_mib(server.pid, "VmHWM")
    finally:
        body_file.unlink(missing_ok=True)
    by_outcome: dict[tuple[int, object], list[float]] = defaultdict(list)
    for photos, status, seconds in json.loads(output):
        by_outcome[photos, status].append(seconds * 1000)
    print(
        f"# {time.strftime('%Y-%m-%d')} {width}x{height} JPEG of {len(body):,} bytes, "
        f"{args.clients} clients ({args.batch_clients} sending {args.batch_images} per request), "
        f"{args.seconds:g} s{', honouring Retry-After' if args.retry_after else ''}"
    )
    for (photos, status), latencies in sorted(by_outcome.items(), key=str):
        print(
            f"photos={photos} status={status} count={len(latencies)} "
            f"p50_ms={percentile(latencies, 50):.0f} p99_ms={percentile(latencies, 99):.0f} "
            f"max_ms={max(latencies):.0f}"
        )

    def photos_of(status: object) -> int:
        return sum(
            photos * len(latencies) for (photos, code), latencies in by_outcome.items()
            if code == status
        )  # fmt: skip

    print(f"answered_photos_per_s={photos_of(200) / args.seconds:.1f}")
    print(f"photos_prepared_then_late={photos_of(504)}")
    print(f"server rss_mib before={before:.0f} after={after:.0f} peak={peak:.0f}")


if __name__ == "__main__":
    main()
