"""Every client mistake, on a real server: the right status, a message that says what was wrong,
never a 500, and the server stays up."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.conftest import LiveServer, answer_until_closed

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


def npy_with_shape(shape: tuple[int, ...]) -> bytes:
    """A .npy file whose header declares `shape` (numpy itself writes at most 64 dimensions)."""
    header = repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(784)


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
    # Checked as sent, not after rounding to float32: 255.00001 was refused as "value 255", and
    # 1e39 (beyond float32, not beyond JSON) was called an infinity.
    *[
        (
            f"above-255-by-{case}",
            "/v1/predict",
            body({"instances": [with_pixel(v)]}),
            JSON,
            422,
            text,
        )
        for case, v, text in (
            ("a-little", 255.00001, "has value 255.00001 at row 3"),
            ("less-than-float32-sees", 255.000001, "has value 255.000001 at row 3"),
            ("more-than-float32-holds", 1e39, "has value 1e+39 at row 3"),
        )
    ],
    # Valid JSON, beyond a double or 64 bits: called an infinity, or "numbers only" (an object
    # array), before.
    *[
        (f"beyond-a-{kind}", "/v1/predict", literal, JSON, 422, "is too large for any value")
        for kind, literal in (
            ("double", b'{"instances": [[' + b"0," * 783 + b"1e400]]}"),
            ("negative-double", b'{"instances": [[' + b"0," * 783 + b"-1e400]]}"),
            ("long-integer", b'{"instances": [[' + b"0," * 783 + b"1" + b"0" * 400 + b"]]}"),
        )
    ],
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
    ("v2-out-of-range-fp64", "/v2/models/mnist/infer", v2([1e308] * 784), JSON, 400, "1e+308"),
    (
        "v2-beyond-a-double",
        "/v2/models/mnist/infer",
        v2(FLAT).removesuffix(b"0]}]}") + b"1e400]}]}",
        JSON,
        400,
        "the number 1e400 is too large",
    ),
    # The declared datatype is part of the request: Triton refuses a fraction for an integer type,
    # and an INT8 cannot be 200 (sent as binary, it would be -56).
    *[
        (
            f"v2-not-{datatype}",
            "/v2/models/mnist/infer",
            v2(data, datatype=datatype),
            JSON,
            400,
            text,
        )
        for datatype, data, text in (
            ("UINT8", [1.5] * 784, "input 'image' is UINT8, but value 0 of its data is 1.5"),
            ("INT8", [0] * 783 + [200], "input 'image' is INT8, but value 783 of its data is 200"),
            ("INT16", [0.25] * 784, "input 'image' is INT16, but value 0 of its data is 0.25"),
        )
    ],
    (
        "v2-unknown-output",
        "/v2/models/mnist/infer",
        body({"inputs": json.loads(v2(FLAT))["inputs"], "outputs": [{"name": "logits"}]}),
        JSON,
        400,
        "unknown output",
    ),
    (
        "v2-output-twice",  # answered twice, a client reading outputs by name took either
        "/v2/models/mnist/infer",
        body(
            {
                "inputs": json.loads(v2(FLAT))["inputs"],
                "outputs": [{"name": "digit"}, {"name": "digit", "parameters": {}}],
            }
        ),
        JSON,
        400,
        "output 'digit' is requested more than once",
    ),
    *[
        (
            f"v2-output-name-{kind}",
            "/v2/models/mnist/infer",
            body({"inputs": json.loads(v2(FLAT))["inputs"], "outputs": [{"name": name}]}),
            JSON,
            400,
            "unknown output",
        )
        for kind, name in (("list", ["digit"]), ("object", {"a": 1}), ("number", 5))
    ],
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


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to the plain-HTTP port
    ],
)
def test_bytes_that_are_not_http_get_a_json_400(server: LiveServer, sent: bytes) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(sent)
        head, body = answer_until_closed(connection)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"x-request-id: " in head
    assert json.loads(body)["code"] == "malformed_request"


# Strings Python's `str.isdigit()` accepts but `int()` rejects or misreads, and sizes no
# version has: each was a 500 (or a silent misreading) on some route before versions were
# parsed in one place.
BAD_VERSIONS = ["%C2%B2", "%D9%A1%D9%A2", "9" * 5000, "1_0", "%201", "0", "-1", "1.0"]
VERSION_ROUTES = [
    ("GET", "/v1/models/mnist/versions/{v}"),
    ("GET", "/v1/models/mnist/versions/{v}/metadata"),
    ("POST", "/v1/models/mnist/versions/{v}:predict"),
    ("GET", "/v2/models/mnist/versions/{v}"),
    ("GET", "/v2/models/mnist/versions/{v}/ready"),
    ("POST", "/v2/models/mnist/versions/{v}/infer"),
    ("GET", "/v2/models/mnist/versions/{v}/config"),
    ("GET", "/v2/models/mnist/versions/{v}/stats"),
]


@pytest.mark.parametrize("version", BAD_VERSIONS)
@pytest.mark.parametrize(("method", "route"), VERSION_ROUTES)
def test_malformed_versions_name_no_model_on_every_route(
    server: LiveServer, method: str, route: str, version: str
) -> None:
    url = server.url + route.format(v=version)
    answer = httpx.request(method, url, content=body({"instances": [BLANK]}), timeout=30)
    assert answer.status_code == 404, answer.text
    assert "version" in answer.json()["error"]
    assert len(answer.text) < 400  # a 5,000-digit version is not echoed back whole


@pytest.mark.parametrize(
    "query",
    ["version=%C2%B2", "version=" + "9" * 5000, "version=0", "label=%C2%B2", "label=a%20b"],
)
def test_malformed_version_or_label_in_a_query_is_invalid_input(
    server: LiveServer, query: str
) -> None:
    answer = httpx.post(f"{server.url}/v1/predict?{query}", json={"instances": [BLANK]}, timeout=30)
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    "datatype", [["FP32"], {"type": "FP32"}, 32, None, True, "fp32", "BYTES"], ids=repr
)
def test_v2_datatype_of_any_json_type_is_a_400(server: LiveServer, datatype: object) -> None:
    request = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": datatype, "data": FLAT}]}
    answer = httpx.post(server.url + "/v2/models/mnist/infer", json=request, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "datatype" in answer.json()["error"]


LONG_MEDIA_TYPE = "application/" + "x" * 20_000
ECHO_CASES = [
    ("v2-shape", "/v2/models/mnist/infer", v2([0], shape=[1] * 5_000 + [784]), JSON, 400),
    ("npy-shape", "/v1/predict", npy_with_shape((1,) * 2_000 + (784,)), "application/x-npy", 422),
    ("native-media", "/v1/predict", body({"instances": [BLANK]}), LONG_MEDIA_TYPE, 415),
    ("v2-media", "/v2/models/mnist/infer", v2(FLAT, shape=(1, 784)), LONG_MEDIA_TYPE, 415),
    ("upload-media", "/v1/predict/image", b"\x89PNG", LONG_MEDIA_TYPE, 415),
]


@pytest.mark.parametrize(
    ("path", "payload", "content_type", "status"),
    [case[1:] for case in ECHO_CASES],
    ids=[case[0] for case in ECHO_CASES],
)
def test_an_error_quotes_only_a_bounded_part_of_what_was_sent(
    server: LiveServer, path: str, payload: bytes, content_type: str, status: int
) -> None:
    """Tens of KB of a client's shape or header came back in the message; over gRPC such a
    message is trailing metadata, which the client's library refuses past 16 KiB."""
    answer = httpx.post(
        server.url + path, content=payload, headers={"content-type": content_type}, timeout=30
    )
    assert answer.status_code == status, answer.text[:300]
    assert len(answer.content) < 1_000, answer.text[:300]


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/v1/models/mnist:classify", 400, "Expected classification signature"),
        ("/v1/models/mnist/versions/1:regress", 400, "Expected regression signature"),
        ("/v1/models/mnist/labels/none:classify", 404, "no label 'none'"),
        ("/v1/models/mnist/versions/7:regress", 404, "version 7 is not served"),
        ("/v1/models/fashion:classify", 404, "'fashion' not found"),
    ],
)
def test_tf_servings_classify_and_regress_say_this_model_only_predicts(
    server: LiveServer, path: str, status: int, fragment: str
) -> None:
    """The routing alone answered 405 Method Not Allowed to a TF Serving client's POST."""
    answer = httpx.post(server.url + path, json={"examples": [{"image": FLAT}]}, timeout=30)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"]


@pytest.mark.parametrize("header", ["²", "١٢", "1 2", "-5", "9" * 40, "0x10"])
def test_v2_binary_header_that_is_not_a_length_is_a_400(server: LiveServer, header: str) -> None:
    answer = httpx.post(
        server.url + "/v2/models/mnist/infer",
        content=v2(FLAT, shape=(1, 784)),
        headers={"Inference-Header-Content-Length": header.encode()},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("timeout", ["0", "abc", "²", "-5", "1e3", "9" * 40])
def test_a_timeout_header_that_is_not_milliseconds_is_a_400(
    server: LiveServer, timeout: str
) -> None:
    answer = httpx.post(
        server.url + "/v1/predict",
        json={"instances": [BLANK]},
        headers={"X-Request-Timeout-Ms": timeout.encode()},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert "x-request-timeout-ms" in answer.json()["error"]
