"""End to end over a real uvicorn process: readiness, the three APIs agreeing, Triton's own client,
metrics, request ids and structured logs."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, copy_version, free_port, stop_server

Start = Callable[..., LiveServer]


def scrape(server: LiveServer) -> str:
    return httpx.get(server.url + "/metrics").text


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        sample = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(sample.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def test_not_ready_until_a_model_appears_then_serves(
    start_server: Start, trained_repository: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-repository"
    server = start_server(empty, wait_ready=False)
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        assert client.get("/v2/health/ready").status_code == 503
        refused = client.post("/v1/predict", json={"instances": [[0] * 784]})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert str(empty.resolve() / "mnist") in server.logs()

        copy_version(trained_repository, empty)
        server.wait_ready()
        answer = client.post("/v1/predict", json={"instances": [[0] * 784]})
        assert answer.status_code == 200
        assert answer.json()["model_version"] == "1"


def test_all_three_apis_give_the_digits_tensorflow_gives(
    served_model: LiveServer, digits: np.ndarray, expected_digits: list[int]
) -> None:
    """And the same unsure flags: the native field, TF Serving's extra signature output (the
    version was exported with one) and V2's `unsure` output."""
    with served_model.client() as client:
        native = [
            p
            for chunk in range(0, len(digits), 4)
            for p in client.post(
                "/v1/predict", json={"instances": digits[chunk : chunk + 4].tolist()}
            ).json()["predictions"]
        ]
        tfs_rows = []
        for chunk in range(0, len(digits), 4):
            batch = digits[chunk : chunk + 4, ..., None].tolist()
            answer = client.post("/v1/models/mnist:predict", json={"instances": batch})
            tfs_rows += answer.json()["predictions"]
        columnar = client.post(
            "/v1/models/mnist:predict", json={"inputs": {"image": digits[:4].tolist()}}
        ).json()["outputs"]
        v2_digits, v2_unsure = [], []
        for chunk in range(0, len(digits), 4):
            batch = digits[chunk : chunk + 4]
            answer = client.post(
                "/v2/models/mnist/infer",
                json={
                    "id": f"chunk-{chunk}",
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [len(batch), 28, 28, 1],
                            "datatype": "UINT8",
                            "data": batch.ravel().tolist(),
                        }
                    ],
                    "outputs": [{"name": "digit"}, {"name": "unsure"}],
                },
            ).json()
            assert answer["id"] == f"chunk-{chunk}"
            assert answer["outputs"][0]["shape"] == [len(batch)]
            assert answer["outputs"][1]["datatype"] == "BOOL"
            v2_digits += answer["outputs"][0]["data"]
            v2_unsure += answer["outputs"][1]["data"]
        # An empty list names none: every output, as over gRPC, where an empty repeated field
        # and an absent one are the same bytes (it used to answer no output at all).
        tensor = {"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}
        every = client.post("/v2/models/mnist/infer", json={"inputs": [tensor], "outputs": []})
        assert [o["name"] for o in every.json()["outputs"]] == ["probabilities", "digit", "unsure"]
    assert [p["digit"] for p in native] == expected_digits
    assert [int(np.argmax(row["probabilities"])) for row in tfs_rows] == expected_digits
    assert [int(np.argmax(row)) for row in columnar["probabilities"]] == expected_digits[:4]
    assert v2_digits == expected_digits
    unsure = [p["unsure"] for p in native]
    assert [row["unsure"] for row in tfs_rows] == unsure == v2_unsure
    assert columnar["unsure"] == unsure[:4]
    assert all(isinstance(flag, bool) for flag in unsure)


def test_tensorflow_serving_status_and_metadata_shapes(served_model: LiveServer) -> None:
    with served_model.client() as client:
        status = client.get("/v1/models/mnist").json()
        assert status == {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
        metadata = client.get("/v1/models/mnist/metadata").json()
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert metadata["model_spec"]["version"] == "1"
        dims = signature["inputs"]["image"]["tensor_shape"]["dim"]
        assert [d["size"] for d in dims] == ["-1", "28", "28", "1"]
        assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
        assert signature["outputs"]["unsure"]["dtype"] == "DT_BOOL"
        assert client.get("/v1/models/mnist/versions/1").status_code == 200
        assert client.get("/v1/models/mnist/versions/2").status_code == 404
        assert client.get("/v1/models").json() == {"models": ["mnist"]}  # KServe V1's list


def test_tritonclient_reads_the_model_configuration(served_model: LiveServer) -> None:
    """Triton's model configuration extension: tools built on tritonclient read the batch limit
    and the per-image shapes there (a 404 before)."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=served_model.url.removeprefix("http://"))
    assert "model_configuration" in client.get_server_metadata()["extensions"]
    config = client.get_model_config("mnist")
    assert client.get_model_config("mnist", "1") == config
    assert config["max_batch_size"] == 4  # MNIST_MAX_REQUEST_IMAGES
    assert config["version_policy"] == {"specific": {"versions": [1]}}
    assert config["input"] == [
        {"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [28, 28, 1]}
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("probabilities", "TYPE_FP32", [10]),
        ("digit", "TYPE_INT64", [1]),
        ("unsure", "TYPE_BOOL", [1]),
    ]
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [32],
        "max_queue_delay_microseconds": 0,
    }
    for name, version in (("mnist", "2"), ("fashion", "")):
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_config(name, version)
        assert refused.value.status() == "404"


def test_tritonclient_reads_the_statistics_of_what_it_sent(
    served_model: LiveServer, digits: np.ndarray
) -> None:
    """Triton's statistics extension, which perf_analyzer reads around every measurement (and
    stops without): the requests, images and model calls of the server's version, in Triton's
    shape. The served model is shared, so what this test sent is read as a difference."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=served_model.url.removeprefix("http://"))
    assert "statistics" in client.get_server_metadata()["extensions"]

    def stats() -> dict[str, Any]:
        (entry,) = client.get_inference_statistics("mnist")["model_stats"]
        assert client.get_inference_statistics("mnist", "1")["model_stats"] == [entry]
        return entry

    before = stats()
    images = digits[:3, ..., None].astype(np.float32)
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    for _ in range(4):
        client.infer("mnist", [tensor])
    after = stats()
    assert (after["name"], after["version"]) == ("mnist", "1")
    assert after["inference_count"] - before["inference_count"] == 12
    assert 1 <= after["execution_count"] - before["execution_count"] <= 4
    done, was = after["inference_stats"], before["inference_stats"]
    for phase in ("success", "queue", "compute_infer"):
        assert done[phase]["count"] - was[phase]["count"] == 4, phase
        assert done[phase]["ns"] > was[phase]["ns"], phase
    assert done["fail"] == was["fail"]
    assert done["success"]["ns"] - was["success"]["ns"] >= (
        done["compute_infer"]["ns"] - was["compute_infer"]["ns"]
    )
    assert after["last_inference"] >= before["last_inference"]
    assert abs(after["last_inference"] / 1000 - time.time()) < 60
    calls = sum(b["compute_infer"]["count"] for b in after["batch_stats"])
    assert calls == after["execution_count"]
    everything = httpx.get(served_model.url + "/v2/models/stats").json()["model_stats"]
    assert [e["version"] for e in everything] == ["1"]
    for name, version in (("mnist", "2"), ("fashion", "")):
        with pytest.raises(InferenceServerException) as refused:
            client.get_inference_statistics(name, version)
        assert refused.value.status() == "404"


def test_tritonclient_speaks_to_the_v2_api(
    served_model: LiveServer, digits: np.ndarray, expected_digits: list[int]
) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=served_model.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist")
    metadata = client.get_model_metadata("mnist")
    assert metadata["inputs"][0]["name"] == "image"
    images = digits[:4, ..., None].astype(np.float32)
    for binary in (True, False):
        tensor = triton.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput("probabilities", binary_data=binary),
            triton.InferRequestedOutput("digit", binary_data=binary),
        ]
        for compression in (None, "gzip", "deflate"):  # the client's own request compression
            result = client.infer(
                "mnist",
                [tensor],
                outputs=outputs,
                request_id="triton-1",
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
            )
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (4, 10)
            assert result.as_numpy("digit").tolist() == expected_digits[:4]
            assert probabilities.argmax(axis=1).tolist() == expected_digits[:4]
    # No outputs named: the protocol returns every output, so all three arrays come back.
    everything = client.infer("mnist", [tensor])
    assert everything.as_numpy("digit").tolist() == expected_digits[:4]
    assert everything.as_numpy("probabilities").shape == (4, 10)
    unsure = everything.as_numpy("unsure")
    assert unsure.dtype == np.bool_
    assert unsure.shape == (4,)
    wrong = triton.InferInput("pixels", list(images.shape), "FP32")
    wrong.set_data_from_numpy(images)
    with pytest.raises(InferenceServerException, match="unknown input"):
        client.infer("mnist", [wrong])
    assert "classification" in client.get_server_metadata()["extensions"]
    for binary in (True, False):  # Triton's classification extension: the best digits, as text
        top = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        classes = client.infer("mnist", [tensor], outputs=[top]).as_numpy("probabilities")
        assert classes.shape == (4, 3)
        cells = [[str(c, "ascii") if binary else c for c in row] for row in classes]
        assert [int(row[0].split(":")[1]) for row in cells] == expected_digits[:4]
        for row, expected in zip(cells, everything.as_numpy("probabilities"), strict=True):
            ranked = [(float(c.split(":")[0]), int(c.split(":")[1])) for c in row]
            assert [digit for _, digit in ranked] == list(np.argsort(-expected)[:3])
            assert all(abs(value - expected[digit]) < 1e-6 for value, digit in ranked)
    with pytest.raises(InferenceServerException, match="applies to 'probabilities'"):
        client.infer(
            "mnist", [tensor], outputs=[triton.InferRequestedOutput("digit", class_count=2)]
        )
    client.close()


def test_metrics_move_after_requests(served_model: LiveServer) -> None:
    before = scrape(served_model)
    with served_model.client() as client:
        for _ in range(3):
            assert (
                client.post("/v1/predict", json={"instances": [[0] * 784] * 2}).status_code == 200
            )
    after = scrape(served_model)
    for name, labels, grew_by in [
        ("http_requests_total", {"route": "/v1/predict", "status": "200"}, 3),
        ("http_request_duration_seconds_count", {"route": "/v1/predict"}, 3),
        ("inference_batch_size_sum", {}, 6),
        ("inference_duration_seconds_count", {}, 1),
        ("inference_queue_wait_seconds_count", {}, 3),
        ("predictions_total", {"model": "mnist", "version": "1"}, 6),
    ]:
        grown = metric(after, name, **labels) - metric(before, name, **labels)
        assert grown >= grew_by, (name, grown)
    assert metric(after, "model_info", model="mnist", version="1") == 1
    assert "inference_queue_depth" in after
    assert "requests_rejected_total" in after


def test_request_id_is_echoed_or_made_and_logged_as_json(served_model: LiveServer) -> None:
    with served_model.client() as client:
        mine = client.post(
            "/v1/predict", json={"instances": [[0] * 784]}, headers={"X-Request-ID": "abc-123"}
        )
        made = client.get("/healthz")
    assert mine.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    entries = [
        json.loads(line) for line in served_model.logs().splitlines() if line.startswith("{")
    ]
    logged = [e for e in entries if e.get("request_id") == "abc-123"]
    assert len(logged) == 1
    assert logged[0]["route"] == "/v1/predict"
    assert logged[0]["status"] == 200
    assert logged[0]["images"] == 1
    assert logged[0]["latency_ms"] > 0


def test_overload_is_refused_fast_with_retry_after(
    start_server: Start, trained_repository: Path
) -> None:
    server = start_server(
        trained_repository,
        MNIST_MAX_QUEUE_IMAGES="40",
        MNIST_MAX_BATCH_SIZE="32",
        MNIST_MAX_BATCH_DELAY_MS="50",
    )
    body = {"instances": [[0] * 784] * 32}

    def post(_: int) -> httpx.Response:
        return httpx.post(server.url + "/v1/predict", json=body, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, range(32)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "no request was refused although the queue holds one request"
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert all(r.json()["code"] == "overloaded" for r in refused)
    assert metric(scrape(server), "requests_rejected_total", reason="queue_full") == len(refused)


def test_refusals_keep_the_connection_and_are_each_counted_and_logged_once(
    start_server: Start, trained_repository: Path
) -> None:
    """Requests of 32 images against a queue of 16: the first are refused after their body is
    parsed, and once the queue has learnt their size, from their headers alone (by the HTTP
    protocol itself, before any routing). Either way a client on a keep-alive connection gets
    the same answer, the unread body is skipped so the connection serves on, and each refusal is
    counted and logged once."""
    server = start_server(trained_repository, MNIST_MAX_QUEUE_IMAGES="16")
    body = json.dumps({"instances": [[0] * 784] * 32})
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    answers = []
    for i in range(20):
        connection.request(
            "POST",
            "/v1/predict",
            body,
            {"Content-Type": "application/json", "X-Request-ID": f"refused-{i}"},
        )
        response = connection.getresponse()
        answers.append((response.status, dict(response.getheaders()), json.loads(response.read())))
    connection.request("GET", "/healthz")
    after = connection.getresponse()
    assert (after.status, json.loads(after.read())) == (200, {"status": "alive"})

    for i, (status, headers, answer) in enumerate(answers):
        assert status == 503
        assert answer["code"] == "overloaded"
        assert headers["retry-after"] == "1"
        assert headers["content-type"] == "application/json"
        assert headers["x-request-id"] == f"refused-{i}"
        assert "connection" not in headers
    text = scrape(server)
    assert metric(text, "http_requests_total", route="/v1/predict", status="503") == 20
    assert metric(text, "requests_rejected_total") == 20
    logged = [
        json.loads(line) for line in server.logs().splitlines() if '"request_id":"refused-' in line
    ]
    assert sorted(e["request_id"] for e in logged) == sorted(f"refused-{i}" for i in range(20))
    assert {(e["route"], e["status"]) for e in logged} == {("/v1/predict", 503)}


def test_refusals_from_the_headers_survive_hostile_header_values(
    start_server: Start, trained_repository: Path
) -> None:
    """Header values a client controls, on requests refused before routing: an id that is not a
    plain token is replaced, a timeout that is not whole milliseconds is the route's 400, and
    nothing is a 500 or a dropped connection."""
    server = start_server(trained_repository, MNIST_MAX_QUEUE_IMAGES="16")
    body = json.dumps({"instances": [[0] * 784] * 32})
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, str]]:
        connection.request(
            "POST", "/v1/predict", body, {"Content-Type": "application/json", **headers}
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())

    for _ in range(12):  # until the queue refuses from the headers alone
        assert post({})[0] == 503
    hostile_ids = ["has space", "x" * 500, "caf\u00e9", "a\tb"]
    for offered in hostile_ids:
        status, headers, answer = post({"X-Request-ID": offered.encode("utf-8").decode("latin-1")})
        assert (status, answer["code"]) == (503, "overloaded")
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    for timeout in ["\u00b2".encode().decode("latin-1"), "-1", "0", "1.5", "9" * 40, ""]:
        status, _, answer = post({"X-Request-Timeout-Ms": timeout})
        assert status == 400, (timeout, status, answer)
        assert answer["code"] == "malformed_request"
    status, _, answer = post({"X-Request-Timeout-Ms": "5"})
    assert (status, answer["code"]) == (503, "overloaded")
    connection.request("GET", "/healthz")
    assert connection.getresponse().status == 200


def test_metrics_cover_every_worker(start_server: Start, trained_repository: Path) -> None:
    server = start_server(trained_repository, MNIST_WORKERS="2")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(
                    server.url + "/v1/predict", json={"instances": [[0] * 784]}, timeout=30
                ),
                range(40),
            )
        )
    assert [answer.status_code for answer in answers] == [200] * 40, server.logs()[-2000:]
    for _ in range(4):  # whichever worker answers the scrape, it reports both
        text = scrape(server)
        assert metric(text, "http_requests_total", route="/v1/predict", status="200") == 40


def test_a_stopped_server_leaves_only_its_runtime_cache_behind(
    start_server: Start, trained_repository: Path, tmp_path: Path
) -> None:
    """Every start of a worker compiles the gRPC messages and a multi-worker run shares its
    metrics through files: a host that restarts the server for months must not collect them."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = start_server(
        trained_repository, MNIST_WORKERS="2", MNIST_GRPC_PORT=str(free_port()), TMPDIR=str(scratch)
    )
    assert any(scratch.iterdir())  # the directory is the one the server uses
    stop_server(server)
    assert server.process.returncode == 0, server.logs()[-2000:]
    assert [path.name for path in scratch.iterdir()] == [f"mnist-serving-tflite-{os.getuid()}"]


def test_openapi_documents_the_apis_with_examples(served_model: LiveServer) -> None:
    spec = httpx.get(served_model.url + "/openapi.json").json()
    for path in ("/v1/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer", "/readyz"):
        assert path in spec["paths"]
    predict = spec["paths"]["/v1/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["instances"]["examples"]
    assert {"200", "413", "415", "422", "503"} <= set(predict["responses"])
