"""`Client` and `AsyncClient`: the same requests and answers, one blocking and one asyncio.

What both share (building requests, reading answers, deciding on retries) is plain functions
here; each class only sends and sleeps its own way.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
SERVER_SHARE = 0.9
"""Of the client's timeout, the budget the server is given (`X-Request-Timeout-Ms`)."""
# Network failures before any answer arrived: the request may be sent again (a prediction has
# no side effects).
RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)

_RAW_TYPE = {"Content-Type": "application/octet-stream"}
_NPY_TYPE = {"Content-Type": "application/x-npy"}

ImageFile = str | Path | bytes | tuple[str, bytes]
"""A path, raw image bytes, or (name, bytes)."""


@dataclass(frozen=True)
class Prediction:
    digit: int
    probability: float
    probabilities: list[float]
    model_version: str
    input: str | list[list[int]] | None = None
    """The 28x28 image the model saw, when asked for (`return_input`)."""
    unsure: bool = False
    """The server's flag: less confident than the version's threshold (maybe not a digit)."""


class ServerError(Exception):
    """The server answered with an error: its status, machine code, message and request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: dict[str, str]
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None


def _version_params(version: int | str | None, label: str | None) -> dict[str, str]:
    params = {}
    if version is not None:
        params["version"] = str(version)
    if label is not None:
        params["label"] = label
    return params


def _predict_call(images: npt.ArrayLike, version: int | str | None, label: str | None) -> _Call:
    array = np.asarray(images)
    if array.shape in ((28, 28), (784,)):
        array = array[None]
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or array.shape[1:] not in ((28, 28), (784,)):
        raise ValueError(f"images must be 28x28 or 784 values each, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"images must hold numbers, got dtype {array.dtype}")
    # Binary, not JSON: whole-number pixels in 0-255 travel as one byte each (the server reads
    # them without parsing); anything else as a .npy file of float32, checked by the server.
    params = _version_params(version, label)
    if np.array_equal(array, np.clip(np.round(array), 0, 255)):
        raw = array.astype(np.uint8).tobytes()
        return _Call("POST", "/v1/predict", params, content=raw, headers=_RAW_TYPE)
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return _Call("POST", "/v1/predict", params, content=buffer.getvalue(), headers=_NPY_TYPE)


def _read_file(item: ImageFile, index: int) -> tuple[str, bytes]:
    if isinstance(item, tuple):
        return item
    if isinstance(item, bytes):
        return f"image-{index}", item
    path = Path(item)
    return path.name, path.read_bytes()


def _upload_call(
    files: Iterable[ImageFile],
    version: int | str | None,
    label: str | None,
    return_input: str | None,
) -> _Call:
    parts = [
        ("file", (name, data, "application/octet-stream"))
        for name, data in (_read_file(item, i) for i, item in enumerate(files))
    ]
    if not parts:
        raise ValueError("no images to send")
    params = _version_params(version, label)
    if return_input is not None:
        params["return_input"] = return_input
    return _Call("POST", "/v1/predict/image", params, files=parts)


def _predictions(response: httpx.Response) -> list[Prediction]:
    body = response.json()
    version = str(body["model_version"])
    return [
        Prediction(
            digit=int(p["digit"]),
            probability=float(p["probability"]),
            probabilities=[float(v) for v in p["probabilities"]],
            model_version=version,
            input=p.get("input"),
            unsure=bool(p.get("unsure", False)),
        )
        for p in body["predictions"]
    ]


def _error(response: httpx.Response) -> ServerError:
    try:
        body = response.json()
        code, message = str(body.get("code", "error")), str(body.get("error", response.text))
    except ValueError:
        code, message = "error", response.text[:200] or response.reason_phrase
    return ServerError(response.status_code, code, message, response.headers.get("x-request-id"))


def _retry_after(response: httpx.Response | None, attempt: int, longest: float) -> float:
    """The server's `Retry-After` if it sent one, else a short exponential back-off."""
    if response is not None:
        try:
            return min(max(float(response.headers.get("retry-after", "")), 0.0), longest)
        except ValueError:
            pass
    return float(min(0.1 * 2**attempt, longest))


class _Settings:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float,
        retries: int,
        max_retry_wait: float,
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.max_retry_wait = timeout, retries, max_retry_wait
        # The server gives up a tenth sooner than the client does, so that its own answer (a
        # 504 that says why) arrives rather than the client's bare timeout.
        budget_ms = max(1, int(timeout * 1000 * SERVER_SHARE))
        self.headers = {"X-Request-Timeout-Ms": str(budget_ms)}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def arguments(self, call: _Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": call.path,
            "params": call.params,
            "files": call.files,
            "content": call.content,
            "headers": call.headers,
        }


class Client:
    """Blocking client. `timeout` (seconds) bounds each attempt and is the server-side budget;
    `retries` bounds how often a refused or failed attempt is repeated."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        max_retry_wait: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(url, api_key, timeout, retries, max_retry_wait)
        self._http = httpx.Client(
            base_url=self._settings.url,
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
        )

    def predict(
        self, images: npt.ArrayLike, *, version: int | str | None = None, label: str | None = None
    ) -> list[Prediction]:
        """Pixel arrays: one 28x28 image or N of them (or 784 flat values), 0 paper, 255 ink."""
        return _predictions(self._send(_predict_call(images, version, label)))

    def predict_files(
        self,
        files: Sequence[ImageFile],
        *,
        version: int | str | None = None,
        label: str | None = None,
        return_input: str | None = None,
    ) -> list[Prediction]:
        """Image files (paths or bytes: PNG, JPEG, ...), one answer each, in order."""
        return _predictions(self._send(_upload_call(files, version, label, return_input)))

    @property
    def url(self) -> str:
        return self._settings.url

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def _send(self, call: _Call) -> httpx.Response:
        settings = self._settings
        for attempt in range(settings.retries + 1):
            last = attempt == settings.retries
            try:
                response = self._http.request(**settings.arguments(call))
            except RETRY_ERRORS:
                if last:
                    raise
                time.sleep(_retry_after(None, attempt, settings.max_retry_wait))
                continue
            if response.is_success:
                return response
            if response.status_code not in RETRY_STATUSES or last:
                raise _error(response)
            time.sleep(_retry_after(response, attempt, settings.max_retry_wait))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of `Client`: the same arguments, awaitable methods."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        max_retry_wait: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(url, api_key, timeout, retries, max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=self._settings.url,
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
        )

    async def predict(
        self, images: npt.ArrayLike, *, version: int | str | None = None, label: str | None = None
    ) -> list[Prediction]:
        return _predictions(await self._send(_predict_call(images, version, label)))

    async def predict_files(
        self,
        files: Sequence[ImageFile],
        *,
        version: int | str | None = None,
        label: str | None = None,
        return_input: str | None = None,
    ) -> list[Prediction]:
        return _predictions(await self._send(_upload_call(files, version, label, return_input)))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _send(self, call: _Call) -> httpx.Response:
        settings = self._settings
        for attempt in range(settings.retries + 1):
            last = attempt == settings.retries
            try:
                response = await self._http.request(**settings.arguments(call))
            except RETRY_ERRORS:
                if last:
                    raise
                await asyncio.sleep(_retry_after(None, attempt, settings.max_retry_wait))
                continue
            if response.is_success:
                return response
            if response.status_code not in RETRY_STATUSES or last:
                raise _error(response)
            await asyncio.sleep(_retry_after(response, attempt, settings.max_retry_wait))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
