"""SIGTERM under load, repeated: is any request lost?

Each run starts `mnist-serve`, lets 16 clients on keep-alive connections (as real clients and
load balancers use them) send single-image predictions back to back, sends SIGTERM after 2 s,
and keeps the clients sending until the server is gone. Every request must end in a 200 or a
clean 503; a connection closed or reset under a request that was sent is a lost request (the
client cannot tell whether it ran). A refused connection is not: nothing was sent. One line per
run, then the totals.

    python bench/shutdown.py --model-repository models --runs 20
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, request_body, served  # noqa: E402


def classify(error: Exception) -> str:
    if isinstance(error, httpx.ConnectError):
        return "refused"  # the request never left the client
    return f"lost:{type(error).__name__}"


def client(url: str, body: bytes, stop: threading.Event, counts: collections.Counter[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            try:
                answer = http.post(
                    "/v1/predict", content=body, headers={"Content-Type": "application/json"}
                )
                counts[str(answer.status_code)] += 1
            except httpx.HTTPError as error:
                kind = classify(error)
                counts[kind] += 1
                if kind == "refused":
                    return


def one_run(
    repository: Path, port: int, body: bytes, clients: int, grace: float
) -> dict[str, object]:
    counts: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    with served(repository, port, "1", drain_grace_seconds=str(grace)) as server:
        threads = [
            threading.Thread(target=client, args=(server.url, body, stop, counts))
            for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        time.sleep(2)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(120)
        exit_seconds = time.monotonic() - signalled
        time.sleep(0.5)  # clients see the refused connection and stop
        stop.set()
        for thread in threads:
            thread.join(30)
    lost = sum(n for kind, n in counts.items() if kind.startswith("lost"))
    return {"counts": dict(counts), "lost": lost, "exit_seconds": round(exit_seconds, 2)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--grace", type=float, default=2.0, help="MNIST_DRAIN_GRACE_SECONDS")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    ensure_model(args.model_repository, args.data_dir)
    body = request_body(1, args.data_dir)
    print(
        f"# {time.strftime('%Y-%m-%d')} {args.clients} keep-alive clients, SIGTERM after 2 s, "
        f"drain grace {args.grace:g} s",
        flush=True,
    )
    total_lost, exits = 0, []
    for run in range(args.runs):
        result = one_run(args.model_repository, 18401 + run, body, args.clients, args.grace)
        total_lost += int(result["lost"])  # type: ignore[call-overload]
        exits.append(float(result["exit_seconds"]))  # type: ignore[arg-type]
        print(f"run={run + 1} {json.dumps(result, sort_keys=True)}", flush=True)
    print(
        f"shutdown runs={args.runs} lost_requests={total_lost} "
        f"exit_seconds_max={max(exits):.2f} "
        f"exit_seconds_median={sorted(exits)[len(exits) // 2]:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
