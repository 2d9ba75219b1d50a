"""Model lifecycle on real server processes and real files: versions and labels, hot reload under
load, refused versions, graceful shutdown and API keys."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import TINY_MODEL, LiveServer, copy_version
from tests.service.test_server import metric, scrape
from training.data import MnistSplits
from training.export import export_version
from training.model import build_model

Start = Callable[..., LiveServer]
IMAGE = {"instances": [[0] * 784]}


class Load:
    """Clients posting continuously from threads; every request and its answer is recorded."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.results: list[tuple[float, str, int | str, str | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                request_id = uuid.uuid4().hex
                started = time.monotonic()
                try:
                    response = client.post(
                        self.url + "/v1/predict", json=IMAGE, headers={"X-Request-ID": request_id}
                    )
                    version = response.json().get("model_version")
                    outcome: int | str = response.status_code
                except httpx.HTTPError as exc:
                    outcome, version = type(exc).__name__, None
                with self._lock:
                    self.results.append((started, request_id, outcome, version))


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def status_of(server: LiveServer, version: int) -> dict[str, object]:
    answer = httpx.get(f"{server.url}/v1/models/mnist/versions/{version}")
    assert answer.status_code == 200, answer.text
    entry: dict[str, object] = answer.json()["model_version_status"][0]
    return entry


@pytest.fixture
def repository(tmp_path: Path, trained_repository: Path) -> Path:
    repo = tmp_path / "repo"
    copy_version(trained_repository, repo, 1)
    return repo


def test_versions_and_labels_in_both_protocols(
    start_server: Start, repository: Path, trained_repository: Path
) -> None:
    copy_version(trained_repository, repository, 2)
    server = start_server(
        repository, MNIST_MODEL_VERSION_POLICY="all", MNIST_MODEL_LABELS="stable=1"
    )
    for version in (1, 2):
        ready = f"{server.url}/v2/models/mnist/versions/{version}/ready"
        wait_until(lambda url=ready: httpx.get(url).is_success)  # type: ignore[misc]
    with server.client() as client:

        def native(**params: object) -> httpx.Response:
            return client.post("/v1/predict", json=IMAGE, params=params)

        assert native().json()["model_version"] == "2"
        assert native(version=1).json()["model_version"] == "1"
        assert native(label="stable").json()["model_version"] == "1"
        unknown = native(version=3)
        assert unknown.status_code == 404
        assert "version 3 is not served" in unknown.json()["error"]
        assert native(label="nightly").status_code == 404

        assert client.post("/v1/models/mnist/versions/1:predict", json=IMAGE).status_code == 200
        assert client.post("/v1/models/mnist/versions/3:predict", json=IMAGE).status_code == 404
        assert client.post("/v1/models/mnist/labels/stable:predict", json=IMAGE).status_code == 200
        v2_body = {
            "inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}]
        }
        answer = client.post("/v2/models/mnist/versions/1/infer", json=v2_body)
        assert answer.json()["model_version"] == "1"
        assert client.post("/v2/models/mnist/versions/3/infer", json=v2_body).status_code == 404

        assert client.post("/v1/models/mnist/labels/canary:predict", json=IMAGE).status_code == 404
        moved = client.put("/v1/admin/models/mnist/labels/canary", json={"version": 2})
        assert moved.json()["labels"] == {"stable": 1, "canary": 2}
        assert native(label="canary").json()["model_version"] == "2"
        refused = client.put("/v1/admin/models/mnist/labels/canary", json={"version": 9})
        assert refused.status_code == 422
        for wrong in (0, True, False, [2]):  # Pydantic's lax mode took true for version 1
            invalid = client.put("/v1/admin/models/mnist/labels/canary", json={"version": wrong})
            assert invalid.status_code == 422, wrong
            assert invalid.json()["error"].startswith("body.version: ")
        compressed = client.put(  # read as every route reads its body
            "/v1/admin/models/mnist/labels/canary",
            content=gzip.compress(b'{"version": 1}'),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert compressed.json()["labels"] == {"stable": 1, "canary": 1}
        assert client.delete("/v1/admin/models/mnist/labels/canary").status_code == 200
        assert native(label="canary").status_code == 404


def test_new_version_under_load_switches_without_losing_or_duplicating(
    start_server: Start, repository: Path, trained_repository: Path
) -> None:
    server = start_server(repository)
    with Load(server.url) as load:
        time.sleep(1.0)
        copy_version(trained_repository, repository, 2)
        wait_until(lambda: any(r[3] == "2" for r in load.results[-20:]))
        time.sleep(1.0)
    outcomes = {r[2] for r in load.results}
    assert outcomes == {200}, [r for r in load.results if r[2] != 200][:5]
    versions = [r[3] for r in sorted(load.results)]
    assert versions[0] == "1"
    assert versions[-1] == "2"
    first_v2 = versions.index("2")
    assert "1" not in versions[first_v2 + 20 :], "old version kept answering after the switch"

    wait_until(lambda: status_of(server, 1)["state"] == "END")  # latest-1 policy unloads it
    entries = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    logged = [e["request_id"] for e in entries if e.get("route") == "/v1/predict"]
    sent = [r[1] for r in load.results]
    assert sorted(logged) == sorted(sent), "a request was lost or answered twice"
    text = scrape(server)
    assert metric(text, "model_info", model="mnist", version="2") == 1
    assert metric(text, "model_info", model="mnist", version="1") == 0
    assert metric(text, "model_reloads_total", result="success") == 2


def test_corrupt_and_untrained_versions_are_refused_and_the_old_keeps_serving(
    start_server: Start, repository: Path, mnist: MnistSplits
) -> None:
    server = start_server(repository)
    corrupt = repository / "mnist" / "2"
    shutil.copytree(repository / "mnist" / "1", corrupt)
    (corrupt / "saved_model.pb").write_bytes(b"not a protobuf")
    with server.client() as client:  # a reload waits for the load and the gate: seconds
        client.post("/v1/admin/reload")
    state = status_of(server, 2)
    assert state["state"] == "END"
    assert "cannot load the SavedModel" in state["status"]["error_message"]  # type: ignore[index]

    def samples(directory: Path) -> None:
        np.savez(
            directory / "samples.npz", images=mnist.test_images[:64], labels=mnist.test_labels[:64]
        )

    recorded = json.loads((repository / "mnist" / "1" / "metadata.json").read_text())
    export_version(
        build_model(TINY_MODEL),  # never trained
        repository / "mnist",
        {"test_accuracy": recorded["test_accuracy"]},
        samples,
    )
    with server.client() as client:
        reloaded = client.post("/v1/admin/reload").json()
    assert reloaded["served_versions"] == [1]
    gate = status_of(server, 3)
    assert "correctness gate failed" in gate["status"]["error_message"]  # type: ignore[index]

    answer = httpx.post(server.url + "/v1/predict", json=IMAGE)
    assert answer.status_code == 200
    assert answer.json()["model_version"] == "1"
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert metric(scrape(server), "model_load_failures_total", model="mnist") == 2


def test_removed_version_is_unloaded(
    start_server: Start, repository: Path, trained_repository: Path
) -> None:
    copy_version(trained_repository, repository, 2)
    server = start_server(repository, MNIST_MODEL_VERSION_POLICY="all")
    wait_until(lambda: httpx.get(server.url + "/v2/models/mnist/versions/2/ready").is_success)
    shutil.rmtree(repository / "mnist" / "2")
    wait_until(lambda: status_of(server, 2)["state"] == "END")
    assert httpx.post(server.url + "/v1/predict", json=IMAGE).json()["model_version"] == "1"


def test_sigterm_under_load_answers_everything_accepted_and_exits_in_time(
    start_server: Start, repository: Path
) -> None:
    # A request is stamped before its client thread gets to connect; on a busy machine that
    # took >0.2 s once, and a connection attempted after the grace period is refused (the
    # listener is closed, as it should be). The grace leaves 1.2 s beyond the window checked.
    server = start_server(
        repository, MNIST_DRAIN_GRACE_SECONDS="2", MNIST_SHUTDOWN_TIMEOUT_SECONDS="10"
    )
    with Load(server.url, threads=6) as load:
        time.sleep(1.0)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        readiness = httpx.get(server.url + "/readyz")
        server.process.wait(timeout=20)
        exited = time.monotonic() - signalled
    assert readiness.status_code == 503
    before = [r for r in load.results if r[0] < signalled]
    assert len(before) > 20
    assert {r[2] for r in before} == {200}, [r for r in before if r[2] != 200][:5]
    during_grace = [r for r in load.results if signalled <= r[0] < signalled + 0.8]
    assert during_grace
    assert {r[2] for r in during_grace} == {200}
    assert exited < 12
    logs = server.logs()
    assert "grace period over" in logs
    # Every answer has its access log line, uvicorn's last lines too: the process ends by the
    # signal uvicorn raises again, before a buffered line would be flushed.
    answered = {r[1] for r in load.results if isinstance(r[2], int)}
    assert answered <= set(re.findall(r'"request_id":"([0-9a-f]{32})"', logs))
    assert "Application shutdown complete" in logs


def test_api_keys_guard_predictions_and_admin_but_not_probes(
    start_server: Start, repository: Path
) -> None:
    server = start_server(
        repository, MNIST_API_KEYS="user-secret-1", MNIST_ADMIN_API_KEYS="admin-secret-2"
    )
    url = server.url

    def predict(**headers: str) -> httpx.Response:
        return httpx.post(url + "/v1/predict", json=IMAGE, headers=headers)

    missing = predict()
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert predict(authorization="Bearer wrong").status_code == 401
    assert predict(authorization="Bearer user-secret-1").status_code == 200
    assert predict(**{"x-api-key": "user-secret-1"}).status_code == 200
    assert predict(authorization="Bearer admin-secret-2").status_code == 200
    v2 = httpx.get(url + "/v2/models/mnist", headers={"x-api-key": "nope"})
    assert v2.status_code == 401

    user, admin = {"x-api-key": "user-secret-1"}, {"x-api-key": "admin-secret-2"}
    assert httpx.post(url + "/v1/admin/reload").status_code == 401
    assert httpx.post(url + "/v1/admin/reload", headers=user).status_code == 403
    assert httpx.post(url + "/v1/admin/reload", headers=admin).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/v2", "/"):
        assert httpx.get(url + open_path).status_code == 200, open_path

    # Default-deny: every documented route but the probes needs a key, new ones included.
    spec = httpx.get(url + "/openapi.json").json()
    open_paths = {"/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"}
    guarded = 0
    for template, methods in spec["paths"].items():
        path = template.format(name="mnist", version="1", label="stable")
        for method in methods:
            status = httpx.request(method, url + path).status_code
            assert (status == 401) == (template not in open_paths), (method, template, status)
            guarded += template not in open_paths
    assert guarded >= 15  # not vacuous: the APIs are all in the spec
    assert httpx.get(url + "/no/such/route").status_code == 401
    logs = server.logs()
    assert "user-secret-1" not in logs
    assert "admin-secret-2" not in logs
    # Refused before routing, yet counted under the route the client asked for.
    assert httpx.get(url + "/docs").status_code == 200
    # The docs' own assets and the icon are open too; only the assets, not what lies beside them.
    assert httpx.get(url + "/docs/assets/swagger-ui.css").status_code == 200
    icon = httpx.get(url + "/favicon.ico")
    assert (icon.status_code, icon.headers["content-type"]) == (200, "image/x-icon")
    assert icon.content.startswith(b"\x00\x00\x01\x00")  # an ICO file
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    connection.request("GET", "/docs/assets/../../v1/models/mnist")
    assert connection.getresponse().status == 404
    connection.close()
    metrics = httpx.get(url + "/metrics").text
    assert metric(metrics, "http_requests_total", route="/v1/predict", status="401") == 3
    assert metric(metrics, "http_requests_total", route="/v1/admin/reload", status="403") == 1
    assert metric(metrics, "http_requests_total", route="/docs", status="200") == 1
    assert metric(metrics, "http_requests_total", route="/docs/assets", status="200") == 1
    assert metric(metrics, "http_requests_total", route="unmatched", status="401") == 1


def test_ctrl_c_stops_at_once_after_answering_what_was_accepted(
    start_server: Start, repository: Path
) -> None:
    """SIGINT is a person at a terminal: no drain grace (set long here), accepted requests done."""
    server = start_server(
        repository, MNIST_DRAIN_GRACE_SECONDS="30", MNIST_SHUTDOWN_TIMEOUT_SECONDS="10"
    )
    with Load(server.url, threads=4) as load:
        time.sleep(0.5)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=20)
        exited = time.monotonic() - signalled
    assert exited < 3
    before = [r for r in load.results if r[0] < signalled - 0.05]
    assert len(before) > 10
    assert {r[2] for r in before} == {200}
    assert "interrupted: finishing accepted requests" in server.logs()
    assert "grace period over" not in server.logs()


def test_text_logs_for_a_terminal_end_start_up_with_the_addresses(
    start_server: Start, repository: Path
) -> None:
    server = start_server(repository, MNIST_LOG_FORMAT="text")
    assert httpx.get(server.url + "/healthz").status_code == 200
    wait_until(lambda: "route=/healthz" in server.logs())
    lines = server.logs().splitlines()
    ready = [line for line in lines if " ready: " in line]
    assert len(ready) == 1
    for page in ("/ ", "/docs ", "/metrics"):
        assert f"{server.url}{page}" in ready[0]
    access = next(line for line in lines if "route=/healthz" in line)
    assert "status=200" in access
    assert not access.lstrip().startswith("{")
