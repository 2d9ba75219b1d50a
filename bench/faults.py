"""Faults, measured: a model call that hangs or raises, a worker killed under load, a model
version vanishing while it serves, a full disk during export. One line per fault.

The hanging and raising model is the real model wrapped in a graph that spins or asserts when an
image's first pixel says so (tests/fault_model.py). The full disk is a real 2 MiB tmpfs (needs
root to mount; skipped otherwise).

    python bench/faults.py --model-repository models
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, served  # noqa: E402
from bench.reload_memory import newest_version, publish  # noqa: E402
from tests.fault_model import HANG_PIXEL, RAISE_PIXEL, export_faulty_version  # noqa: E402


def body(count: int = 1, first: float = 0.0, second: float = 0.0) -> dict[str, object]:
    images = np.zeros((count, 28, 28), np.float32)
    images[0, 0, 0], images[0, 0, 1] = first, second
    return {"instances": images.tolist()}


def wait_until(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"gave up after {timeout} s waiting for {condition}")
        time.sleep(0.02)


def timed(call: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = call()  # type: ignore[operator]
    return answer, (time.monotonic() - started) * 1000


def hung_and_raising(source: Path) -> None:
    repository = Path(tempfile.mkdtemp(prefix="faults-"))
    export_faulty_version(source, repository)
    with (
        served(repository, 18951, "1", runtime="savedmodel") as server,  # faults need TF ops
        httpx.Client(base_url=server.url, timeout=30) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        failed, failed_ms = timed(lambda: client.post("/v1/predict", json=body(1, RAISE_PIXEL)))
        after, _ = timed(lambda: client.post("/v1/predict", json=body(1)))
        print(
            f"fault=model_raises status={failed.status_code} code={failed.json()['code']} "
            f"ms={failed_ms:.1f} next_request_status={after.status_code}",
            flush=True,
        )
        started = time.monotonic()
        stuck = pool.submit(client.post, "/v1/predict", json=body(1, HANG_PIXEL, 250))
        time.sleep(1.2)
        refused = [timed(lambda: client.post("/v1/predict", json=body(1))) for _ in range(20)]
        ready_during = client.get("/readyz").status_code
        answer = stuck.result()
        stuck_ms = (time.monotonic() - started) * 1000
        wait_until(lambda: client.get("/readyz").status_code == 200)
        ready_after_s = time.monotonic() - started
        print(
            f"fault=model_hangs_2.5s hung_request_status={answer.status_code} "
            f"hung_request_answered_ms={stuck_ms:.0f} "
            f"newcomers={sorted({r.status_code for r, _ in refused})} "
            f"newcomer_max_ms={max(ms for _, ms in refused):.1f} readyz_during={ready_during} "
            f"ready_again_after_s={ready_after_s:.2f}",
            flush=True,
        )
    shutil.rmtree(repository, ignore_errors=True)


def worker_killed(repository: Path) -> None:
    with served(repository, 18952, "0,1", workers="2") as server:
        workers = [
            int(p)
            for task in Path(f"/proc/{server.pid}/task").iterdir()
            for p in (task / "children").read_text().split()
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        statuses: dict[str, int] = {}

        def load(stop_at: float) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while time.monotonic() < stop_at:
                    try:
                        key = str(client.post("/v1/predict", json=body(1)).status_code)
                    except httpx.HTTPError as error:
                        key = type(error).__name__
                    statuses[key] = statuses.get(key, 0) + 1

        stop_at = time.monotonic() + 20
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(load, stop_at)
            time.sleep(3)
            os.kill(workers[0], signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 503)
            wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
            replaced_s = time.monotonic() - killed
        metrics = httpx.get(server.url + "/metrics").text
        dead_series = metrics.count(f'pid="{workers[0]}"')
        print(
            f"fault=worker_killed workers=2 answers={dict(sorted(statuses.items()))} "
            f"ready_again_after_s={replaced_s:.1f} dead_worker_series_in_scrape={dead_series}",
            flush=True,
        )


def version_vanishes(source: Path) -> None:
    repository = Path(tempfile.mkdtemp(prefix="faults-"))
    (repository / "mnist").mkdir()
    publish(source, repository / "mnist", 1)
    with served(repository, 18953, "1") as server:
        statuses: dict[int, int] = {}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            shutil.rmtree(repository / "mnist" / "1")
            started = time.monotonic()
            while time.monotonic() - started < 5:
                status = client.post("/v1/predict", json=body(1)).status_code
                statuses[status] = statuses.get(status, 0) + 1
            ready = client.get("/readyz").status_code
            publish(source, repository / "mnist", 2)
            wait_until(lambda: client.get("/readyz").status_code == 200)
            back_s = time.monotonic() - started - 5
        print(
            f"fault=served_version_deleted answers_in_5s={dict(sorted(statuses.items()))} "
            f"readyz_after={ready} serving_again_after_new_version_s={back_s:.1f}",
            flush=True,
        )
    shutil.rmtree(repository, ignore_errors=True)


def disk_full_export(data_dir: str | None) -> None:
    mount = Path(tempfile.mkdtemp(prefix="faults-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        print("fault=disk_full_export skipped=cannot-mount-tmpfs", flush=True)
        return
    try:
        command = [sys.executable, "-m", "training", "--model-repository", str(mount),
                   "--limit", "2000", "--epochs", "1", "--no-reports", "--quiet"]  # fmt: skip
        if data_dir:
            command += ["--data-dir", data_dir]
        result = subprocess.run(command, capture_output=True, text=True)
        left = sorted(p.name for p in (mount / "mnist").iterdir())
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        print(
            f"fault=disk_full_export exit={result.returncode} left_in_repository={left} "
            f"message={message[:160]!r}",
            flush=True,
        )
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def main() -> None:
    parser = arguments(__doc__)
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    source = newest_version(args.model_repository / "mnist")
    print(f"# {time.strftime('%Y-%m-%d')} faults, model {source}", flush=True)
    hung_and_raising(source)
    worker_killed(args.model_repository)
    version_vanishes(source)
    disk_full_export(args.data_dir)


if __name__ == "__main__":
    main()
