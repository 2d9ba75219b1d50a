"""A /metrics flood: does a client scraping as fast as it can starve the predictions?

`/metrics` needs no key (Prometheus scrapes it), and a render costs the event loop milliseconds.
The server (defaults: access log and gRPC on) runs pinned to one core, the load generators to
the other. Each round measures predictions (`--clients` wrk connections, one image each) alone,
then while a second wrk scrapes `/metrics` on `--scrapers` connections. `--code DIR` serves
another checkout (a worktree of an older commit) in the same round, A B A B.

    python bench/scrape_flood.py --model-repository models
    python bench/scrape_flood.py --model-repository models --code /tmp/before --rounds 2
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, request_body, served, wrk  # noqa: E402

PORT = 18241


def scrape_flood(url: str, connections: int, seconds: int, core: str) -> subprocess.Popen[str]:
    command = ["taskset", "-c", core, "wrk", "-t", "1", "-c", str(connections)]
    command += ["-d", f"{seconds}s", url + "/metrics"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def scrapes_per_second(wrk_output: str) -> float:
    found = re.search(r"Requests/sec:\s+([\d.]+)", wrk_output)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scrapers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--code", type=Path, help="another checkout, measured beside this one")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    body = Path(tempfile.mkdtemp()) / "one.json"
    body.write_bytes(request_body(1, args.data_dir))
    checkouts: list[tuple[str, Path | None]] = [("this", None)]
    if args.code is not None:
        checkouts.insert(0, ("code", args.code))
    for round_number in range(args.rounds):
        for name, code in checkouts:
            with served(
                args.model_repository, PORT, args.server_core, code=code, grpc_port=str(PORT + 1)
            ) as server:  # gRPC on, as users run it: its series are in every render
                predict = server.url + "/v1/predict"
                alone = wrk(predict, body, args.clients, args.seconds, args.client_core)
                flood = scrape_flood(server.url, args.scrapers, args.seconds + 2, args.client_core)
                time.sleep(1)
                under = wrk(predict, body, args.clients, args.seconds, args.client_core)
                scraped = scrapes_per_second(flood.communicate()[0])
            figures = {
                "round": round_number + 1,
                "checkout": str(code) if code is not None else name,
                "predictions_per_s_alone": round(alone["requests"] / alone["seconds"]),
                "predictions_per_s_under_flood": round(under["requests"] / under["seconds"]),
                "p99_ms_under_flood": round(under["p99_us"] / 1000, 1),
                "scrapes_per_s": round(scraped),
            }
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
