"""Connection floods: can other clients still be served while one client hoards sockets?

Starts `mnist-serve` (HTTP and gRPC, core 1), then, from this process (core 0), opens as many
sockets as its open-file limit allows to one port and keeps them open, each one silent, sending
one header line every 5 s, sending its headers and then one body byte every 5 s, asking for
responses and never reading them (with `--sockets 200`), or (gRPC) starting HTTP/2 and making no
call (`--kind`); or it opens gRPC calls whose message never comes (`--calls`).
While they are held, a new client sends `--probes` requests one after another (a prediction over
HTTP, or a gRPC health check for `--port grpc`), each on a new connection, and the server's own
figures are read: open connections, connections shed at the limit, RSS. Then the flood is
closed and the probes sent again. One JSON line per phase.

    python bench/connection_flood.py --model-repository models
    python bench/connection_flood.py --model-repository models --kind drip-body
    python bench/connection_flood.py --model-repository models --port grpc --kind h2
    python bench/connection_flood.py --model-repository models --kind slow-read --sockets 200
    python bench/connection_flood.py --model-repository models --calls 8000

A slow-read flood is the clearest at a small limit, its probes after the server has written
what the kernel takes: `--server-max-connections 200 --probe-after-seconds 20 --hold-seconds 75`.
`--code DIR` serves another checkout (a worktree of an older commit) for a before/after run.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, request_body, rss_mib, served  # noqa: E402

HTTP_PORT, GRPC_PORT = 18231, 18232
FIRST_BYTES = {
    "silent": b"",
    "drip-head": b"GET /readyz HTTP/1.1\r\nHost: flood\r\n",
    "drip-body": b"POST /echo HTTP/1.1\r\nHost: flood\r\nContent-Length: 100000\r\n\r\n",
    # HTTP/2's connection preface and an empty SETTINGS frame, then no call (for --port grpc)
    "h2": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    # 2.6 MB of responses asked for, none read: more than the kernel's buffers take
    "slow-read": b"GET /openapi.json HTTP/1.1\r\nHost: flood\r\n\r\n" * 50,
}
DRIP = {"drip-head": b"X-Drip: a\r\n", "drip-body": b"0"}


def flood(port: int, count: int, kind: str, stop: threading.Event) -> list[socket.socket]:
    """`count` sockets to `port`, each sent its kind's first bytes, then a drip every 5 s (in a
    thread) until `stop`."""
    held = []
    for _ in range(count):
        try:
            connection = socket.socket()
            if kind == "slow-read":  # the smallest window the kernel allows, never read
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            connection.settimeout(5)
            connection.connect(("127.0.0.1", port))
        except OSError:
            connection.close()
            break  # the kernel's backlog or this process's descriptors ran out
        with contextlib.suppress(OSError):
            connection.sendall(FIRST_BYTES[kind])
        held.append(connection)

    def drip() -> None:
        while not stop.wait(5):
            for connection in held:
                with contextlib.suppress(OSError):
                    connection.send(DRIP[kind])

    if kind in DRIP:
        threading.Thread(target=drip, daemon=True).start()
    return held


def stalled_calls(count: int, stop: threading.Event) -> Callable[[], dict[str, int]]:
    """`count` ModelInfer calls whose message never comes, 200 per connection, each held until
    the server ends it or `stop`; returns what gives each call's outcome, by status code."""
    import grpc

    def nothing() -> Iterator[bytes]:
        stop.wait(120)
        yield from ()

    own = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}", options=own)]
    futures = []
    for n in range(count):
        if n and n % 200 == 0:
            channels.append(grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}", options=own))
        call = channels[-1].stream_unary("/inference.GRPCInferenceService/ModelInfer")
        futures.append(call.future(nothing()))

    def outcomes() -> dict[str, int]:
        counted: dict[str, int] = {}
        for future in futures:
            error = future.exception(timeout=60)
            code = error.code().name if error is not None else "OK"
            counted[code] = counted.get(code, 0) + 1
        for channel in channels:
            channel.close()
        return counted

    return outcomes


def still_open(held: list[socket.socket]) -> int:
    """How many the server has not closed (what it sent, a 408 or HTTP/2 settings, is read)."""
    open_count = 0
    for connection in held:
        connection.setblocking(False)
        try:
            while connection.recv(65536):
                pass
        except BlockingIOError:
            open_count += 1  # nothing more to read, and not closed
        except OSError:
            pass  # reset
    return open_count


def http_probe(body: bytes) -> Callable[[], str]:
    def probe() -> str:
        request = (
            b"POST /v1/predict HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        with socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=5) as connection:
            connection.sendall(request)
            answer = connection.recv(100)
        return answer.split(b" ", 2)[1].decode() if answer else "closed"

    return probe


def grpc_probe() -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            return str(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
        except grpc.RpcError as error:
            return str(error.code().name)


def probes(probe: Callable[[], str], count: int) -> dict[str, object]:
    outcomes: dict[str, int] = {}
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            outcome = probe()
        except OSError as error:
            outcome = type(error).__name__
        latencies.append((time.perf_counter() - started) * 1000)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "probes": outcomes,
        "probe_p50_ms": round(statistics.median(latencies), 2),
        "probe_max_ms": round(max(latencies), 2),
    }


def server_figures(url: str) -> dict[str, float]:
    text = subprocess.run(
        ["curl", "-s", "-m", "10", url + "/metrics"], capture_output=True, text=True
    ).stdout
    figures = {}
    for line in text.splitlines():
        if line.startswith("http_connections_") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            figures[name] = float(value)
    return figures


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--kind", choices=sorted(FIRST_BYTES), default="silent")
    parser.add_argument("--port", choices=["http", "grpc"], default="http")
    parser.add_argument("--sockets", type=int, default=0, help="default: as many as fit")
    parser.add_argument("--hold-seconds", type=float, default=15)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument(
        "--probe-after-seconds",
        type=float,
        default=1,
        help="when the probes start, from the flood's start, and at least 1 s after its last "
        "socket (slow-read: the server is busy writing for a while)",
    )
    parser.add_argument("--server-max-connections", type=int, help="MNIST_MAX_CONNECTIONS")
    parser.add_argument("--code", type=Path)
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        help="instead of sockets: this many gRPC calls whose message never comes, 200 per "
        "connection (implies --port grpc)",
    )
    parser.add_argument(
        "--server-soft-files",
        type=int,
        help="the soft open-file limit the server starts with (1024: as container runtimes "
        "often start containers, under a higher hard limit); default: this process's",
    )
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    os.sched_setaffinity(0, {0})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = args.sockets or min(hard, 1 << 16) - 200
    if args.calls:
        args.port, args.kind = "grpc", "calls"
    probe = http_probe(request_body(1, args.data_dir)) if args.port == "http" else grpc_probe
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.server_soft_files or soft, hard))
    limit = {}
    if args.server_max_connections:
        limit["max_connections"] = str(args.server_max_connections)
    with served(
        args.model_repository, HTTP_PORT, "1", code=args.code, grpc_port=str(GRPC_PORT), **limit
    ) as server:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server has its own
        base_rss = rss_mib(server.pid)
        stop = threading.Event()
        started = time.monotonic()
        if args.calls:
            held, outcomes = [], stalled_calls(args.calls, stop)
        else:
            held = flood(HTTP_PORT if args.port == "http" else GRPC_PORT, count, args.kind, stop)
        opened_in = time.monotonic() - started
        time.sleep(max(1.0, args.probe_after_seconds - opened_in))  # 1 s after the last
        during = probes(probe, args.probes)
        time.sleep(max(0.0, args.hold_seconds - (time.monotonic() - started)))
        print(
            json.dumps(
                {
                    "phase": "flood",
                    "kind": args.kind,
                    "port": args.port,
                    "sockets_opened": len(held),
                    "calls_opened": args.calls,
                    "opened_in_s": round(opened_in, 1),
                    "still_open_after_s": round(time.monotonic() - started, 1),
                    # a reset slow reader still reads what its buffer holds: the server's count
                    "still_open": still_open(held) if args.kind != "slow-read" else None,
                    **during,
                    **server_figures(server.url),
                    "rss_mib": round(rss_mib(server.pid), 1),
                    "rss_before_mib": round(base_rss, 1),
                }
            ),
            flush=True,
        )
        stop.set()
        for connection in held:
            connection.close()
        if args.calls:
            print(json.dumps({"phase": "calls", "outcomes": outcomes()}), flush=True)
        time.sleep(2)
        after = probes(probe, args.probes)
        print(json.dumps({"phase": "after", **after, "rss_mib": round(rss_mib(server.pid), 1)}))


if __name__ == "__main__":
    main()
