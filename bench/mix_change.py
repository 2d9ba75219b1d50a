"""Refusals when the request mix changes under closed-loop load: single images first, then a few
clients sending 32 images each and resending at once whatever is refused.

    python bench/mix_change.py --model-repository models   # needs: apt-get install wrk

Admission forecasts a request's wait from what the model's calls cost lately, and single images
teach a higher cost per image than batches of 32 (the event loop's work is per request). So
right after the switch some 32-image requests are refused. Eight clients are far below the
server's capacity, and each refusal should teach nothing: the figure to watch is how many
requests are refused in the first window after the switch, and whether later windows have any.
The server (defaults, access log and an API key on) runs pinned to one core and wrk to another;
each round starts a fresh server, and the in-process batch-32 ceiling of the same run is printed
first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, in_process_ceiling, request_body, served, wrk  # noqa: E402

API_KEY = "mix-change-key"


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single-seconds", type=int, default=8)
    parser.add_argument("--windows", type=int, default=3, help="4-second windows after the switch")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="mix-change-") as scratch:
        single, batch = Path(scratch) / "single.json", Path(scratch) / "batch32.bin"
        single.write_bytes(request_body(1, args.data_dir))
        batch.write_bytes(request_body(32, args.data_dir, "raw"))
        run_rounds(args, single, batch)


def run_rounds(args: argparse.Namespace, single: Path, batch: Path) -> None:
    ceiling = in_process_ceiling(args.model_repository, args.server_core, 32, 5)
    print(f"# in-process batch-32 ceiling {ceiling:.0f} images/s", flush=True)
    headers = (f"x-api-key: {API_KEY}",)
    for round_ in range(1, args.rounds + 1):
        with served(args.model_repository, 18311, args.server_core, api_keys=API_KEY) as server:
            url = server.url + "/v1/predict"
            first = wrk(url, single, 64, args.single_seconds, args.client_core, headers=headers)
            rate = first["requests"] / first["seconds"]
            line = f"round {round_}: single images c=64 {rate:.0f}/s"
            for window in range(1, args.windows + 1):
                result = wrk(
                    url, batch, 8, 4, args.client_core, "application/octet-stream", headers
                )
                images = (result["requests"] - result["non_2xx"]) * 32 / result["seconds"]
                line += (
                    f" | 32 images c=8 window {window}: {images:.0f} images/s, "
                    f"{result['non_2xx']:.0f} refused, p99 {result['p99_us'] / 1000:.0f} ms"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
