"""Peers benchmark: this service beside Seldon MLServer and BentoML, every server serving the same
SavedModel (this project's export) with the same digits, measured in one run by the same load
generator with the same pinning, servers alternated (A B C, then B C A, ...).

    python bench/peers.py --model-repository models   # needs: apt-get install wrk

MLServer and BentoML are installed into their own virtual environments under `--venvs` (never the
project's; pinned in `bench/peers/<peer>/requirements.txt`, installed once, reinstalled when the
pins change), each served by a small runtime/service file written here (`bench/peers/<peer>/`).
Rows: mnist-serving with JSON on `/v1/predict` (access log, metrics and an API key on, as users
run it), the same server on its V2 route with the V2 body MLServer gets, and with binary bodies
(32-image loads); MLServer 1.7 (V2 JSON) and BentoML 1.4 (the `/v1/predict` JSON body), each
without and with its adaptive batching, MLServer also with inference in its own process
(`parallel_workers: 0`, faster here than its default worker process). Loads: one image per
request at concurrency 1, 8 and 64, 32 images per request at 1 and 8. Printed: one line per
figure (medians of `--repeats`), the in-process ceilings of both runtimes, the issue's targets as
ratios, a Markdown table; and a PNG chart (`--chart`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import (  # noqa: E402
    arguments,
    ensure_model,
    in_process_ceiling,
    launched,
    served,
    wrk,
)

PEERS = HERE / "peers"
API_KEY = "peers-benchmark-key"
LOADS = [
    # (name, images per request, concurrency)
    ("single", 1, 1),
    ("single", 1, 8),
    ("single", 1, 64),
    ("batch32", 32, 1),
    ("batch32", 32, 8),
]
CONTENT_TYPES = {
    "native": "application/json",
    "v2": "application/json",
    "raw": "application/octet-stream",
}


@dataclass(frozen=True)
class Row:
    """One server as a client calls it: where wrk posts, which body, which headers."""

    name: str
    url: str
    body: str
    headers: tuple[str, ...] = ()
    peer: bool = True
    batch_only: bool = False


def bodies(data_dir: str | None, workdir: Path) -> dict[tuple[str, int], Path]:
    """The same test digits in each server's body format, written once."""
    from training.data import load_mnist

    digits = load_mnist(data_dir).test_images[:32]
    files = {}
    for images in (1, 32):
        chosen = digits[:images]
        formats = {
            "native": json.dumps({"instances": chosen.tolist()}).encode(),
            "v2": json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [images, 28, 28, 1],
                            "datatype": "FP32",
                            "data": chosen.reshape(-1).tolist(),
                        }
                    ]
                }
            ).encode(),
            "raw": chosen.tobytes(),
        }
        for kind, content in formats.items():
            files[kind, images] = workdir / f"{kind}-{images}.body"
            files[kind, images].write_bytes(content)
    return files


def peer_venv(peer: str, root: Path) -> Path:
    """The peer's own virtual environment, (re)installed when its pinned requirements change."""
    requirements = PEERS / peer / "requirements.txt"
    pins = hashlib.sha256(requirements.read_bytes()).hexdigest()
    venv = root / peer
    marker = venv / "installed-requirements.sha256"
    if marker.exists() and marker.read_text() == pins:
        return venv
    print(f"# installing {peer} into {venv} (once; a few minutes)", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    marker.write_text(pins)
    return venv


def peer_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}


@contextlib.contextmanager
def mlserver(
    venv: Path,
    model: Path,
    port: int,
    core: str,
    batching: bool,
    workdir: Path,
    parallel_workers: int = 1,
) -> Iterator[str]:
    """MLServer with our runtime: inference in `parallel_workers` worker processes (its default,
    1) or, with 0, in the server's own process; adaptive batching up to 64 images waiting at most
    2 ms, when `batching`."""
    folder = workdir / f"mlserver-{port}"
    (folder / "mnist").mkdir(parents=True)
    shutil.copy(PEERS / "mlserver" / "runtime.py", folder / "mnist" / "runtime.py")
    settings = {
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "parallel_workers": parallel_workers,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "mnist",
        "implementation": "runtime.SavedModelDigits",
        "parameters": {"uri": str(model)},
        **({"max_batch_size": 64, "max_batch_time": 0.002} if batching else {}),
    }
    (folder / "mnist" / "model-settings.json").write_text(json.dumps(model_settings))
    url = f"http://127.0.0.1:{port}/v2/models/mnist"
    command = [str(venv / "bin" / "mlserver"), "start", str(folder)]
    with launched(command, peer_env(), core, url + "/ready", folder / "server.log"):
        yield url + "/infer"


@contextlib.contextmanager
def bentoml(
    venv: Path, model: Path, port: int, core: str, batching: bool, workdir: Path
) -> Iterator[str]:
    env = {**peer_env(), "MNIST_MODEL_PATH": str(model), "BENTOML_HOME": str(workdir / "bento")}
    service = "service:Digits" if batching else "service:DigitsUnbatched"
    command = [str(venv / "bin" / "bentoml"), "serve", service, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"bentoml-{port}.log"
    with launched(command, env, core, url + "/readyz", log, cwd=PEERS / "bentoml"):
        yield url + "/predict"


def answered_digits(row: Row, body: Path) -> list[int]:
    """The digits a server answers for the 32-image body: proof that every row serves the same
    model, before any figure is taken."""
    request = urllib.request.Request(
        row.url,
        data=body.read_bytes(),
        headers={"Content-Type": CONTENT_TYPES[row.body]}
        | dict(h.split(": ", 1) for h in row.headers),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    if isinstance(answer, list):  # BentoML: the probabilities
        return [max(range(10), key=p.__getitem__) for p in answer]
    if "predictions" in answer:
        return [p["digit"] for p in answer["predictions"]]
    digit = next(o for o in answer["outputs"] if o["name"] == "digit")
    return [int(d) for d in digit["data"]]


def measure(
    rows: list[Row],
    files: dict[tuple[str, int], Path],
    args: argparse.Namespace,
) -> dict[tuple[str, str], dict[str, float]]:
    """Medians per (row, load): every row of a load measured once per round, the order rotated."""
    figures = {}
    for load, images, concurrency in LOADS:
        key = f"{load} c={concurrency}"
        active = [r for r in rows if images > 1 or not r.batch_only]
        for row in active:  # warm up
            body = files[row.body, images]
            wrk(
                row.url,
                body,
                concurrency,
                2,
                args.client_core,
                CONTENT_TYPES[row.body],
                row.headers,
            )
        runs: dict[str, list[dict[str, float]]] = {r.name: [] for r in active}
        for round_ in range(args.repeats):
            shift = round_ % len(active)
            for row in active[shift:] + active[:shift]:
                body = files[row.body, images]
                runs[row.name].append(
                    wrk(
                        row.url,
                        body,
                        concurrency,
                        args.seconds,
                        args.client_core,
                        CONTENT_TYPES[row.body],
                        row.headers,
                    )
                )
        for row in active:
            done = runs[row.name]
            # answered requests only: wrk counts a 503 as a request
            rps = statistics.median((r["requests"] - r["non_2xx"]) / r["seconds"] for r in done)
            figure = {
                "requests_per_s": rps,
                "images_per_s": rps * images,
                "p50_ms": statistics.median(r["p50_us"] for r in done) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in done) / 1000,
                "errors": sum(r["errors"] for r in done),  # non-2xx and socket errors
            }
            figures[row.name, key] = figure
            print(
                f"http load={key} images_per_request={images} server={row.name!r} "
                f"requests_per_s={rps:.0f} images_per_s={rps * images:.0f} "
                f"p50_ms={figure['p50_ms']:.2f} p99_ms={figure['p99_ms']:.2f} "
                f"errors={figure['errors']:.0f}",
                flush=True,
            )
    return figures


def targets(
    figures: dict[tuple[str, str], dict[str, float]],
    rows: list[Row],
    ceiling_b32: float,
) -> list[str]:
    """The issue's targets, each as the measured ratio beside the one it must reach."""
    ours, peers = "mnist-serving", [r.name for r in rows if r.peer]

    def best_peer(load: str, field: str) -> tuple[str, float]:
        return max(((p, figures[p, load][field]) for p in peers), key=lambda pair: pair[1])

    c1 = figures[ours, "single c=1"]
    unbatched = ("MLServer", "MLServer in-process")  # its two set-ups without batching: the better
    mls = max((figures[p, "single c=1"] for p in unbatched), key=lambda f: f["requests_per_s"])
    c64 = figures[ours, "single c=64"]
    c64_peer, c64_best = best_peer("single c=64", "requests_per_s")
    b32 = figures[ours, "batch32 c=8"]
    b32_peer, b32_best = best_peer("batch32 c=8", "images_per_s")
    raw = figures[f"{ours} binary", "batch32 c=8"]

    checks = [
        ("c=1 p50 vs MLServer (better unbatched)", c1["p50_ms"] / mls["p50_ms"], "<=", 0.75),
        (
            "c=1 requests/s vs MLServer (better unbatched)",
            c1["requests_per_s"] / mls["requests_per_s"],
            ">=",
            1.3,
        ),
        (f"c=64 requests/s vs best peer ({c64_peer})", c64["requests_per_s"] / c64_best, ">=", 2.5),
        ("c=64 p99 ms", c64["p99_ms"], "<=", 50),
        (
            f"32-image c=8 images/s vs best peer ({b32_peer})",
            b32["images_per_s"] / b32_best,
            ">=",
            1.3,
        ),
        ("32-image c=8 images/s vs batch-32 ceiling", b32["images_per_s"] / ceiling_b32, ">=", 0.9),
        ("binary 32-image c=8 vs batch-32 ceiling", raw["images_per_s"] / ceiling_b32, ">=", 0.95),
    ]
    return [
        f"target {what}: {value:.2f} (goal {sign} {goal}) "
        + ("met" if (value <= goal if sign == "<=" else value >= goal) else "NOT met")
        for what, value, sign, goal in checks
    ]


def table(figures: dict[tuple[str, str], dict[str, float]], rows: list[Row]) -> str:
    """Markdown: one row per server, one column per load (requests/s and p50/p99 ms; images/s for
    32-image loads)."""
    loads = [f"{load} c={concurrency}" for load, _, concurrency in LOADS]
    lines = [
        "| server | " + " | ".join(loads) + " |",
        "|---|" + "---:|" * len(loads),
    ]
    for row in rows:
        cells = []
        for load in loads:
            figure = figures.get((row.name, load))
            if figure is None:
                cells.append("")
                continue
            rate = "img/s" if load.startswith("batch32") else "req/s"
            value = figure["images_per_s"] if rate == "img/s" else figure["requests_per_s"]
            cells.append(
                f"{value:,.0f} {rate}<br>{figure['p50_ms']:.2f} / {figure['p99_ms']:.1f} ms"
            )
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(
    figures: dict[tuple[str, str], dict[str, float]],
    rows: list[Row],
    ceilings: dict[tuple[str, int], float],
    path: Path,
) -> None:
    """Images/s per load and server (bars), with the in-process ceilings (dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [f"{load} c={concurrency}" for load, _, concurrency in LOADS]
    figure, (rates, latencies) = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        xs = [i + index * width for i, load in enumerate(loads) if (row.name, load) in figures]
        present = [load for load in loads if (row.name, load) in figures]
        rates.bar(
            xs, [figures[row.name, load]["images_per_s"] for load in present], width, label=row.name
        )
        latencies.bar(
            xs, [figures[row.name, load]["p50_ms"] for load in present], width, label=row.name
        )
    # each ceiling over the loads it bounds: batch 1 over single images, batch 32 over 32-image
    single = sum(1 for _, images, _ in LOADS if images == 1)
    spans = {1: (-0.1, single - 0.1), 32: (single - 0.1, len(loads) - 0.1)}
    names = {"auto": "ours", "savedmodel": "SavedModel (peers)"}
    for (runtime, batch), value in ceilings.items():
        start, stop = spans[batch]
        style = "--" if runtime == "auto" else ":"
        rates.hlines(value, start, stop, linestyles=style, colors="black", linewidth=1)
        rates.annotate(
            f"in-process ceiling, {names[runtime]}: {value:,.0f}",
            (start + 0.05, value),
            fontsize=7,
            va="bottom" if runtime == "auto" else "top",
        )
    rates.set_title("images/s (higher is better)")
    latencies.set_title("p50 latency, ms (lower is better; log scale)")
    latencies.set_yscale("log")
    for axis in (rates, latencies):
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(loads))], loads, fontsize=8)
    rates.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.85))
    figure.suptitle(f"mnist-serving and peers, same model and load, {time.strftime('%Y-%m-%d')}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = arguments(__doc__, cores=True)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--venvs",
        type=Path,
        default=Path.home() / ".cache" / "mnist-serving" / "peer-venvs",
        help="where the peers' own virtual environments live",
    )
    parser.add_argument("--chart", type=Path, default=Path("peers.png"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    ensure_model(args.model_repository, args.data_dir)
    repository = args.model_repository.resolve()
    newest = max(int(p.name) for p in (repository / "mnist").iterdir() if p.name.isdigit())
    model = repository / "mnist" / str(newest)
    venvs = {peer: peer_venv(peer, args.venvs) for peer in ("mlserver", "bentoml")}
    workdir = Path(tempfile.mkdtemp(prefix="peers-bench-"))
    files = bodies(args.data_dir, workdir)

    print(
        f"# {time.strftime('%Y-%m-%d')} model {model}, server core {args.server_core}, wrk core "
        f"{args.client_core}, {args.seconds} s x {args.repeats} per figure, medians",
        flush=True,
    )
    ceilings = {}
    for runtime in ("auto", "savedmodel"):  # ours, and the peers' (the SavedModel itself)
        for batch in (1, 32):
            runs = [
                in_process_ceiling(repository, args.server_core, batch, 5, runtime)
                for _ in range(args.repeats)
            ]
            ceilings[runtime, batch] = statistics.median(runs)
            print(
                f"ceiling runtime={runtime} batch={batch} images_per_s="
                f"{ceilings[runtime, batch]:.0f}",
                flush=True,
            )

    core = args.server_core
    key = (f"Authorization: Bearer {API_KEY}",)
    with (
        served(repository, 18401, core, api_keys=API_KEY) as ours,
        mlserver(venvs["mlserver"], model, 18410, core, False, workdir) as plain,
        mlserver(venvs["mlserver"], model, 18420, core, True, workdir) as batching,
        mlserver(venvs["mlserver"], model, 18440, core, False, workdir, 0) as inline,
        mlserver(venvs["mlserver"], model, 18450, core, True, workdir, 0) as inline_batching,
        bentoml(venvs["bentoml"], model, 18430, core, False, workdir) as bento_plain,
        bentoml(venvs["bentoml"], model, 18431, core, True, workdir) as bento_batching,
    ):
        rows = [
            Row("mnist-serving", ours.url + "/v1/predict", "native", key, peer=False),
            Row("mnist-serving V2", ours.url + "/v2/models/mnist/infer", "v2", key, peer=False),
            Row("mnist-serving binary", ours.url + "/v1/predict", "raw", key, False, True),
            Row("MLServer", plain, "v2"),
            Row("MLServer batching", batching, "v2"),
            Row("MLServer in-process", inline, "v2"),
            Row("MLServer in-process batching", inline_batching, "v2"),
            Row("BentoML", bento_plain, "native"),
            Row("BentoML batching", bento_batching, "native"),
        ]
        expected = answered_digits(rows[0], files["native", 32])
        for row in rows[1:]:
            digits = answered_digits(row, files[row.body, 32])
            if digits != expected:
                sys.exit(f"{row.name} answers {digits}, mnist-serving {expected}: not one model")
        figures = measure(rows, files, args)
    for line in targets(figures, rows, ceilings["auto", 32]):
        print(line, flush=True)
    print(table(figures, rows), flush=True)
    chart(figures, rows, ceilings, args.chart)
    print(f"# chart: {args.chart}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
