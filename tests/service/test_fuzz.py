"""Property-based fuzzing of every HTTP operation: no client input may get a 5xx.

schemathesis generates requests from the service's own OpenAPI schema (every operation, path and
query parameters, bodies of every JSON type, and deliberately wrong ones); hypothesis strategies
cover what the schema cannot say: the three JSON body formats with values of any JSON type, and
Triton's binary extension with lying lengths. Seeds are fixed, so CI's run is repeatable;
`bench/fuzz.py` runs the same for many more examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.settings import Settings
from tests.conftest import LiveServer, serving_the_tiny_model

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize="FUZZ_RANDOM" not in os.environ,  # CI: the same examples every run
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def served_model(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Its own server, not the suite's shared one: with no keys set the fuzzing reaches the
    admin routes, and the labels or versions it may change must not leak into other tests."""
    log_path = tmp_path_factory.mktemp("fuzz-logs") / "server.log"
    with serving_the_tiny_model(trained_repository, log_path) as server:
        yield server


# The schema the service publishes, built without starting it (the model loads in the lifespan).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@FUZZ
def test_no_operation_answers_a_server_error(
    case: schemathesis.Case, served_model: LiveServer
) -> None:
    response = case.call(base_url=served_model.url, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.headers.get("x-request-id")
    if response.status_code >= 400:
        assert "error" in response.json()


@pytest.fixture(scope="module")
def client(served_model: LiveServer) -> Iterator[httpx.Client]:
    with served_model.client() as http:
        yield http


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
pixel_rows = st.lists(
    st.one_of(st.integers(-5, 300), st.floats(allow_nan=False, allow_infinity=False), json_values),
    min_size=0,
    max_size=6,
)
V2_DATATYPES = ["UINT8", "INT64", "FP16", "FP32", "FP64", "BOOL", "BYTES", "fp32", ""]


def assert_client_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert response.headers.get("x-request-id")
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@given(instances=json_values | st.lists(pixel_rows, max_size=3))
@FUZZ
def test_native_bodies_of_any_json_type(client: httpx.Client, instances: object) -> None:
    assert_client_error(client.post("/v1/predict", json={"instances": instances}))


@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "instances": json_values,
            "inputs": json_values,
            "signature_name": json_values,
        },
    )
)
@FUZZ
def test_tensorflow_serving_bodies_of_any_json_type(client: httpx.Client, body: object) -> None:
    assert_client_error(client.post("/v1/models/mnist:predict", json=body))


@given(
    tensor=st.fixed_dictionaries(
        {},
        optional={
            "name": st.just("image") | json_values,
            "datatype": st.sampled_from(V2_DATATYPES) | json_values,
            "shape": st.lists(st.integers(-2, 3000), max_size=5) | json_values,
            "data": json_values,
            "parameters": json_values,
        },
    ),
    outputs=json_values,
)
@FUZZ
def test_v2_tensors_of_any_json_type(client: httpx.Client, tensor: object, outputs: object) -> None:
    body = {"inputs": [tensor], "outputs": outputs}
    assert_client_error(client.post("/v2/models/mnist/infer", json=body))


@given(
    datatype=st.sampled_from(V2_DATATYPES) | st.text(max_size=6),
    images=st.integers(0, 3),
    declared=st.integers(-10, 10_000),
    header=st.integers(-5, 400) | st.text(alphabet="0123456789+-x²", min_size=1, max_size=6),
    payload=st.binary(max_size=12_000),
)
@FUZZ
def test_v2_binary_extension_with_lying_lengths(
    client: httpx.Client,
    datatype: str,
    images: int,
    declared: int,
    header: int | str,
    payload: bytes,
) -> None:
    import orjson

    request = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [images, 28, 28, 1],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    )
    response = client.post(
        "/v2/models/mnist/infer",
        content=request + payload,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header).encode("latin-1"),
        },
    )
    assert_client_error(response)
