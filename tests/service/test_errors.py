"""Every client mistake, on a real server: the right status, a message that says what was wrong,
never a 500, and the server stays up."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import LiveServer

BLANK = [[0] * 28 for _ in range(28)]
JSON = "application/json"


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def with_pixel(value: object) -> list[list[object]]:
    image: list[list[object]] = [list(row) for row in BLANK]
    image[3][5] = value
    return image


def v2(
    data: object, shape: object = (1, 28, 28, 1), datatype: str = "FP32", name: str = "image"
) -> bytes:
    return body(
        {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}
    )


FLAT = [0] * 784
CASES = [
    # (id, path, body, content type, status, message fragment)
    ("malformed-json", "/v1/predict", b'{"instances": [[1, 2', JSON, 400, "not valid JSON"),
    ("empty-body", "/v1/predict", b"", JSON, 400, "empty"),
    ("not-an-object", "/v1/predict", body([BLANK]), JSON, 422, '"instances"'),
    ("missing-instances", "/v1/predict", body({"images": [BLANK]}), JSON, 422, '"instances"'),
    ("instances-not-list", "/v1/predict", body({"instances": 3}), JSON, 422, "must be a list"),
    ("empty-batch", "/v1/predict", body({"instances": []}), JSON, 422, "empty"),
    ("too-many-images", "/v1/predict", body({"instances": [BLANK] * 5}), JSON, 422, "at most 4"),
    ("wrong-shape", "/v1/predict", body({"instances": [BLANK[:27]]}), JSON, 422, "[27, 28]"),
    ("flat-wrong-length", "/v1/predict", body({"instances": [[0] * 783]}), JSON, 422, "[783]"),
    (
        "ragged-rows",
        "/v1/predict",
        body({"instances": [[*BLANK[:27], [0] * 27]]}),
        JSON,
        422,
        "ragged",
    ),
    ("string-pixel", "/v1/predict", body({"instances": [with_pixel("7")]}), JSON, 422, "[0][3][5]"),
    ("null-pixel", "/v1/predict", body({"instances": [with_pixel(None)]}), JSON, 422, "null"),
    ("bool-pixel", "/v1/predict", body({"instances": [with_pixel(True)]}), JSON, 422, "true/false"),
    ("nan-pixel", "/v1/predict", b'{"instances": [[' + b"NaN," * 783 + b"0]]}", JSON, 422, "NaN"),
    (
        "infinity-pixel",
        "/v1/predict",
        b'{"instances": [[' + b"0," * 783 + b"Infinity]]}",
        JSON,
        422,
        "inf",
    ),
    ("above-255", "/v1/predict", body({"instances": [with_pixel(256)]}), JSON, 422, "0-255"),
    (
        "negative",
        "/v1/predict",
        body({"instances": [with_pixel(-1)]}),
        JSON,
        422,
        "row 3, column 5",
    ),
    (
        "wrong-content-type",
        "/v1/predict",
        body({"instances": [BLANK]}),
        "text/csv",
        415,
        "application/json",
    ),
    (
        "too-large-body",
        "/v1/predict",
        b'{"instances": [' + b"0," * 300_000 + b"0]}",
        JSON,
        413,
        "limit",
    ),
    (
        "tfs-ragged",
        "/v1/models/mnist:predict",
        body({"instances": [[[0] * 28, [0]]]}),
        JSON,
        400,
        "ragged",
    ),
    (
        "tfs-both-formats",
        "/v1/models/mnist:predict",
        body({"instances": [FLAT], "inputs": [FLAT]}),
        JSON,
        400,
        "exactly one",
    ),
    (
        "tfs-bad-signature",
        "/v1/models/mnist:predict",
        body({"signature_name": "x", "instances": [FLAT]}),
        JSON,
        400,
        "signature",
    ),
    (
        "tfs-unknown-model",
        "/v1/models/fashion:predict",
        body({"instances": [FLAT]}),
        JSON,
        404,
        "fashion",
    ),
    (
        "tfs-unknown-version",
        "/v1/models/mnist/versions/7:predict",
        body({"instances": [FLAT]}),
        JSON,
        404,
        "version 7",
    ),
    ("v2-malformed", "/v2/models/mnist/infer", b"{", JSON, 400, "not valid JSON"),
    (
        "v2-no-inputs",
        "/v2/models/mnist/infer",
        body({"outputs": []}),
        JSON,
        400,
        "exactly one input",
    ),
    (
        "v2-wrong-name",
        "/v2/models/mnist/infer",
        v2(FLAT, name="pixels"),
        JSON,
        400,
        "unknown input 'pixels'",
    ),
    ("v2-bytes-type", "/v2/models/mnist/infer", v2(FLAT, datatype="BYTES"), JSON, 400, "datatype"),
    ("v2-size-mismatch", "/v2/models/mnist/infer", v2(FLAT[:700]), JSON, 400, "700 values"),
    ("v2-bad-shape", "/v2/models/mnist/infer", v2(FLAT, shape=(1, 784, 1)), JSON, 400, "shape"),
    ("v2-out-of-range", "/v2/models/mnist/infer", v2([300] * 784), JSON, 400, "0-255"),
    (
        "v2-unknown-output",
        "/v2/models/mnist/infer",
        body({"inputs": json.loads(v2(FLAT))["inputs"], "outputs": [{"name": "logits"}]}),
        JSON,
        400,
        "unknown output",
    ),
    ("v2-unknown-model", "/v2/models/fashion/infer", v2(FLAT), JSON, 404, "fashion"),
    ("v2-content-type", "/v2/models/mnist/infer", v2(FLAT), "text/plain", 415, "Content-Type"),
]


@pytest.fixture(scope="module")
def server(served_model: LiveServer) -> LiveServer:
    return served_model


@pytest.mark.parametrize(
    ("path", "payload", "content_type", "status", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_client_mistakes_get_a_clear_json_error(
    server: LiveServer, path: str, payload: bytes, content_type: str, status: int, fragment: str
) -> None:
    response = httpx.post(
        server.url + path, content=payload, headers={"content-type": content_type}, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert fragment in error["error"], error
    assert error["code"]
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_no_request_above_ever_produced_a_server_error(server: LiveServer) -> None:
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics


def test_unknown_route_and_method_are_json_too(server: LiveServer) -> None:
    missing = httpx.get(server.url + "/v3/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"] == "Not Found"
    wrong_method = httpx.get(server.url + "/v1/predict")
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()
