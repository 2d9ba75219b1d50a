"""`Client` and `AsyncClient` against real servers: answers, keys, errors and bounded retries."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from mnist_client import AsyncClient, Client, ServerError
from tests.conftest import LiveServer, copy_version, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Start = Callable[..., LiveServer]


def test_predict_matches_the_native_api(
    served_model: LiveServer, digits: np.ndarray, expected_digits: list[int]
) -> None:
    with Client(served_model.url) as client:
        assert client.ready()
        answers = client.predict(digits[:4])
        single = client.predict(digits[0])
        flat = client.predict(digits[:2].reshape(2, 784).astype(np.float32))
    assert [a.digit for a in answers] == expected_digits[:4]
    assert single[0].digit == expected_digits[0]
    assert [a.digit for a in flat] == expected_digits[:2]
    assert answers[0].model_version == "1"
    assert abs(sum(answers[0].probabilities) - 1) < 1e-4
    assert answers[0].probability == max(answers[0].probabilities)


def test_predict_files_matches_the_upload_endpoint(served_model: LiveServer) -> None:
    files = [EXAMPLES / "digit.png", EXAMPLES / "one.jpg", EXAMPLES / "two.webp"]
    with Client(served_model.url) as client:
        answers = client.predict_files([*files[:2], ("two.webp", files[2].read_bytes())])
        with_input = client.predict_files([files[0]], return_input="pixels")
    with served_model.client() as http:
        direct = http.post(
            "/v1/predict/image", files=[("file", (f.name, f.read_bytes())) for f in files]
        ).json()["predictions"]
    assert [a.digit for a in answers] == [p["digit"] for p in direct]
    assert np.allclose([a.probabilities for a in answers], [p["probabilities"] for p in direct])
    assert np.asarray(with_input[0].input).shape == (28, 28)


def test_client_mistakes_raise_at_once_with_the_servers_message(
    served_model: LiveServer,
) -> None:
    with Client(served_model.url, retries=3) as client:
        started = time.monotonic()
        with pytest.raises(ServerError) as refused:
            client.predict_files([b"not an image"])
        assert time.monotonic() - started < 2  # a 4xx is not retried
        with pytest.raises(ServerError, match="404") as unknown:
            client.predict(np.zeros((28, 28)), version=99)
        with pytest.raises(ValueError, match="28x28"):
            client.predict(np.zeros((27, 27)))
    assert refused.value.status in (415, 422)
    assert refused.value.request_id
    assert unknown.value.code == "model_not_found"


def test_api_keys_are_sent(start_server: Start, trained_repository: Path) -> None:
    server = start_server(trained_repository, MNIST_API_KEYS="secret-1")
    with Client(server.url, api_key="secret-1") as client:
        assert client.predict(np.zeros((28, 28)))[0].model_version == "1"
    with Client(server.url, api_key="wrong") as client, pytest.raises(ServerError) as denied:
        client.predict(np.zeros((28, 28)))
    assert denied.value.status == 401


def test_refusals_are_retried_after_retry_after_then_given_up(
    start_server: Start, tmp_path: Path, trained_repository: Path
) -> None:
    repository = tmp_path / "empty"
    repository.mkdir()
    server = start_server(repository, wait_ready=False)  # alive, no model: 503 + Retry-After
    with Client(server.url, retries=2, max_retry_wait=0.2) as client:
        started = time.monotonic()
        with pytest.raises(ServerError) as unavailable:
            client.predict(np.zeros((28, 28)))
        waited = time.monotonic() - started
    assert unavailable.value.status == 503
    assert 0.4 <= waited < 3  # two waits of at most 0.2 s (the server asked for 1 s)

    # Retries that outlast the outage succeed: the model appears while the client waits.
    answers: list[object] = []

    def predict_patiently() -> None:
        with Client(server.url, retries=40, max_retry_wait=0.25) as patient:
            answers.extend(patient.predict(np.zeros((28, 28))))

    caller = threading.Thread(target=predict_patiently)
    caller.start()
    time.sleep(0.5)
    copy_version(trained_repository, repository)
    caller.join(timeout=60)
    assert len(answers) == 1


def test_connection_failures_are_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # free a moment ago: connections are refused
    with Client(url, retries=2, max_retry_wait=0.05) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            client.predict(np.zeros((28, 28)))
        assert time.monotonic() - started >= 0.1  # waited between the three attempts


def test_async_client_gives_the_same_answers(served_model: LiveServer, digits: np.ndarray) -> None:
    async def both() -> tuple[list[int], list[int]]:
        async with AsyncClient(served_model.url) as client:
            assert await client.ready()
            batched, files = await asyncio.gather(
                client.predict(digits[:4]), client.predict_files([EXAMPLES / "digit.png"])
            )
            return [p.digit for p in batched], [p.digit for p in files]

    async_digits, async_files = asyncio.run(both())
    with Client(served_model.url) as client:
        assert async_digits == [p.digit for p in client.predict(digits[:4])]
        assert async_files == [p.digit for p in client.predict_files([EXAMPLES / "digit.png"])]
