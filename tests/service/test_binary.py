"""Binary bodies on the native API, over a live server: raw uint8 pixels and .npy files answer
what TensorFlow answers, and every malformed body gets the JSON error its class deserves."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.conftest import LiveServer

RAW = {"content-type": "application/octet-stream"}
NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def digits_of(response_json: dict[str, object]) -> list[int]:
    return [p["digit"] for p in response_json["predictions"]]  # type: ignore[attr-defined,index]


def test_raw_pixels_answer_what_tensorflow_answers(
    served_model: LiveServer, digits: np.ndarray, expected_digits: list[int]
) -> None:
    digits, expected_digits = digits[:4], expected_digits[:4]  # the fixture's request limit
    assert digits.dtype == np.uint8
    with served_model.client() as client:
        response = client.post("/v1/predict", content=digits.tobytes(), headers=RAW)
        assert response.status_code == 200, response.text
        assert digits_of(response.json()) == expected_digits
        as_json = client.post("/v1/predict", json={"instances": digits.tolist()}).json()
        assert response.json() == as_json


@pytest.mark.parametrize(
    "layout",
    [
        lambda d: d,
        lambda d: d.reshape(len(d), 784),
        lambda d: d[..., None],
        lambda d: d.astype(np.float32),
        lambda d: d.astype(">f8"),  # big-endian
        lambda d: np.asfortranarray(d.astype(np.int16)),
    ],
    ids=["uint8-28x28", "uint8-784", "uint8-28x28x1", "float32", "big-endian-f8", "fortran-i16"],
)
def test_npy_files_answer_what_tensorflow_answers(
    served_model: LiveServer, digits: np.ndarray, expected_digits: list[int], layout: object
) -> None:
    digits, expected_digits = digits[:4], expected_digits[:4]
    array = layout(digits)  # type: ignore[operator]
    with served_model.client() as client:
        response = client.post("/v1/predict", content=npy(array), headers=NPY)
    assert response.status_code == 200, response.text
    assert digits_of(response.json()) == expected_digits


def huge_shape_npy() -> bytes:
    """A valid header that declares 10^12 images, followed by one image of data."""
    header = npy(np.zeros((1, 28, 28), np.uint8)).replace(b"(1, 28, 28)", b"(10**12, 28, 28)")
    return header.replace(b"10**12", b"1000000000000")


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        (RAW, b"", 422, "whole images of 784 bytes"),
        (RAW, bytes(785), 422, "got 785 bytes"),
        (RAW, bytes(784 * 65), 422, "at most"),
        (NPY, b"", 400, "not a .npy file"),
        (NPY, b"\x93NUMPY garbage", 400, "format version"),
        (NPY, npy(np.zeros((2, 28, 28), np.uint8))[:-10], 400, "needs 1568"),
        (NPY, npy(np.zeros((2, 28, 28), np.uint8)) + b"x", 400, "needs 1568"),
        (NPY, huge_shape_npy(), 422, "at most"),
        (NPY, npy(np.zeros((0, 28, 28), np.uint8)), 422, "no images"),
        (NPY, npy(np.zeros((2, 27, 28), np.uint8)), 422, "shape (2, 27, 28)"),
        (NPY, npy(np.zeros(784, np.uint8)), 422, "shape (784,)"),
        (NPY, npy(np.zeros((1, 28, 28), bool)), 422, "not a number type"),
        (NPY, npy(np.zeros((1, 28, 28), complex)), 422, "not a number type"),
        (NPY, npy(np.array([None] * 784).reshape(1, 784), allow_pickle=True), 422, "number type"),
        (NPY, npy(np.full((1, 784), 256.0)), 422, "0-255"),
        (NPY, npy(np.full((1, 784), -1, np.int8)), 422, "0-255"),
        (NPY, npy(np.full((1, 784), np.nan, np.float32)), 422, "NaN"),
        ({"content-type": "image/png"}, b"x", 415, "application/x-npy"),
    ],
    ids=lambda value: value if isinstance(value, int) else None,
)
def test_malformed_binary_bodies_get_clear_errors(
    served_model: LiveServer, headers: dict[str, str], body: bytes, status: int, message: str
) -> None:
    with served_model.client() as client:
        response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.headers["x-request-id"]
