"""`POST /v1/predict/image` on a real server: every format, and every way an upload can be bad."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, launch_server, stop_server
from tests.service.test_server import metric, scrape
from training.data import MnistSplits

MAX_UPLOAD_BYTES = 300_000
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def server(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("upload-logs") / "server.log"
    live = launch_server(
        trained_repository,
        log_path,
        MNIST_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        MNIST_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
        MNIST_MAX_UPLOAD_IMAGES="4",
    )
    yield live
    stop_server(live)


def as_upload(digit: np.ndarray, fmt: str, mode: str = "L", scale: int = 6) -> bytes:
    """A test digit as a user would send it: dark ink on white, larger, in a given format."""
    paper = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    if mode == "RGBA":  # ink on a transparent canvas
        alpha = Image.fromarray(digit).resize(paper.size, Image.Resampling.BILINEAR)
        image = Image.merge("RGBA", (*[Image.new("L", paper.size, 0)] * 3, alpha))
    else:
        image = paper.convert(mode)
    buffer = io.BytesIO()
    if fmt == "GIF":
        blank = Image.new("L", image.size, 255)
        image.save(buffer, "GIF", save_all=True, append_images=[blank], duration=100)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


FORMATS = [
    ("PNG", "L", "image/png"),
    ("PNG", "RGBA", "image/png"),
    ("JPEG", "RGB", "image/jpeg"),
    ("BMP", "RGB", "image/bmp"),
    ("GIF", "L", "image/gif"),
    ("WEBP", "RGB", "image/webp"),
    ("TIFF", "L", "image/tiff"),
]


@pytest.mark.parametrize(
    ("fmt", "mode", "media"), FORMATS, ids=[f"{f.lower()}-{m.lower()}" for f, m, _ in FORMATS]
)
def test_each_format_is_read_and_answers_like_the_pixels_api(
    server: LiveServer, mnist: MnistSplits, fmt: str, mode: str, media: str
) -> None:
    digit = mnist.test_images[0]
    answer = httpx.post(
        server.url + "/v1/predict/image",
        params={"return_input": "pixels"},
        content=as_upload(digit, fmt, mode),
        headers={"content-type": media},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    seen = np.array(prediction["input"], dtype=np.float32)
    assert seen.shape == (28, 28)
    assert seen.max() == 255
    same = httpx.post(server.url + "/v1/predict", json={"instances": [seen.tolist()]}).json()
    assert same["predictions"][0]["digit"] == prediction["digit"]
    assert np.allclose(
        same["predictions"][0]["probabilities"], prediction["probabilities"], atol=1e-5
    )


def test_multipart_upload_of_several_images_with_png_data_urls(
    server: LiveServer, mnist: MnistSplits
) -> None:
    files = [
        ("file", (f"digit{i}.png", as_upload(mnist.test_images[i], "PNG"), "image/png"))
        for i in range(3)
    ]
    answer = httpx.post(
        server.url + "/v1/predict/image", params={"return_input": "png"}, files=files, timeout=30
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3
    for prediction in predictions:
        assert prediction["input"].startswith("data:image/png;base64,")
        assert 0 <= prediction["digit"] <= 9


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to declare another size."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 90), "white").save(buffer, "PNG")
    return buffer.getvalue()


def truncated_png(mnist_digit: np.ndarray) -> bytes:
    return as_upload(mnist_digit, "PNG")[:200]


BAD = [
    ("empty", b"", "image/png", 422, "empty"),
    ("not-an-image", b"hello, world", "image/png", 415, "not an image"),
    ("wrong-content-type", b"{}", "application/json", 415, "Content-Type"),
    ("decompression-bomb", png_claiming(30_000, 30_000), "image/png", 413, "pixels"),
    ("too-large-body", b"\x89PNG" + b"0" * (MAX_UPLOAD_BYTES + 10), "image/png", 413, "limit"),
    ("no-ink", blank_png(), "image/png", 422, "no digit"),
]


@pytest.mark.parametrize(
    ("body", "media", "status", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_uploads_get_clear_errors(
    server: LiveServer, body: bytes, media: str, status: int, fragment: str
) -> None:
    answer = httpx.post(
        server.url + "/v1/predict/image", content=body, headers={"content-type": media}, timeout=30
    )
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"]
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_truncated_and_multipart_mistakes(server: LiveServer, mnist: MnistSplits) -> None:
    url = server.url + "/v1/predict/image"
    truncated = httpx.post(
        url, content=truncated_png(mnist.test_images[0]), headers={"content-type": "image/png"}
    )
    assert truncated.status_code == 422
    assert "corrupt or truncated" in truncated.json()["error"]
    no_file = httpx.post(url, data={"note": "no image here"}, files={"x": ("", b"", "")})
    assert no_file.status_code in (400, 422)
    too_many = httpx.post(
        url,
        files=[
            ("file", (f"{i}.png", as_upload(mnist.test_images[i], "PNG"), "image/png"))
            for i in range(5)
        ],
    )
    assert too_many.status_code in (400, 422)
    assert "error" in too_many.json()
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_multipart_body_is_held_to_the_upload_limit_however_it_is_framed(
    server: LiveServer, framing: str
) -> None:
    """Starlette's form parser bounds no file part: a chunked body (no Content-Length to refuse
    up front) was streamed whole to a temporary file and then read into memory."""
    head = (
        b'--bound\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG"
    )
    block = bytes(64 * 1024)
    blocks = 4 * MAX_UPLOAD_BYTES // len(block)

    def body() -> Iterator[bytes]:
        yield head
        yield from (block for _ in range(blocks))
        yield b"\r\n--bound--\r\n"

    sent = body() if framing == "chunked" else b"".join(body())
    answer = httpx.post(
        server.url + "/v1/predict/image",
        content=sent,
        headers={"content-type": "multipart/form-data; boundary=bound"},
        timeout=30,
    )
    assert answer.status_code == 413, answer.text
    assert f"exceeds the {MAX_UPLOAD_BYTES} byte limit" in answer.json()["error"]
    assert httpx.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("mode", ["LAB", "CMYK", "YCbCr", "I", "I;16", "F", "P", "LA", "1"])
def test_every_colour_mode_is_read_or_refused_as_a_client_error(
    server: LiveServer, mnist: MnistSplits, mode: str
) -> None:
    """A LAB TIFF decodes, then fails in mode conversion: the whole pipeline is guarded."""
    image = Image.fromarray(255 - mnist.test_images[0]).convert("RGB").resize((84, 84))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="TIFF")
    answer = httpx.post(
        server.url + "/v1/predict/image",
        content=buffer.getvalue(),
        headers={"Content-Type": "image/tiff"},
        timeout=30,
    )
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 422:
        assert "could not be read" in answer.json()["error"]


def test_a_flood_of_photos_is_refused_by_time_not_queued(server: LiveServer) -> None:
    """Preparing a photo costs the server tens of milliseconds that the model's queue does not
    see: uploads beyond what can be prepared within the budget get a fast 503, not a long wait."""
    rng = np.random.default_rng(0)
    paper = (200 + rng.integers(0, 10, (1500, 2000, 3))).astype(np.uint8)  # textured, like a photo
    paper[300:1200, 960:1040] = 20
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="JPEG", quality=75)
    photo = buffer.getvalue()
    assert len(photo) < MAX_UPLOAD_BYTES

    def send(_: int) -> httpx.Response:
        headers = {"Content-Type": "image/jpeg"}
        return httpx.post(
            f"{server.url}/v1/predict/image", content=photo, headers=headers, timeout=30
        )

    with ThreadPoolExecutor(48) as senders:
        answers = list(senders.map(send, range(96)))
    statuses = Counter(answer.status_code for answer in answers)
    # Some prepared and answered, some refused at once; a deadline's 504 is allowed (an accepted
    # request may still miss it on this busy machine), a queue of seconds is not.
    assert statuses[200], statuses
    assert statuses[503], statuses
    assert set(statuses) <= {200, 503, 504}, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["code"] == "overloaded"
            assert int(answer.headers["Retry-After"]) >= 1
    counted = scrape(server)
    behind = metric(counted, "requests_rejected_total", reason="uploads_behind")
    late = metric(counted, "requests_rejected_total", reason="over_budget")  # once prepared
    assert behind > 0
    assert behind + late >= statuses[503]


def test_the_images_of_an_upload_whose_client_left_are_not_prepared(
    served_model: LiveServer,
) -> None:
    """64 pictures take the server's threads hundreds of milliseconds; a client that gives up
    before then is dropped, and its pictures that have not started are never decoded."""
    sheet = np.full((1500, 2000), 230, np.uint8)
    sheet[300:1200, 960:1040] = 20
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")  # small to send, slow to decode
    files = [("file", (f"{index}.png", buffer.getvalue(), "image/png")) for index in range(64)]
    dropped = {"name": "requests_dropped_total", "reason": "client_disconnected"}
    answered = {"name": "http_requests_total", "route": "/v1/predict/image", "status": "499"}
    before = scrape(served_model)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            served_model.url + "/v1/predict/image",
            files=files,
            timeout=httpx.Timeout(10, read=0.1),
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = scrape(served_model)
        if all(metric(after, **m) > metric(before, **m) for m in (dropped, answered)):
            break
        time.sleep(0.05)
    assert metric(after, **dropped) == metric(before, **dropped) + 1
    assert metric(after, **answered) == metric(before, **answered) + 1
    assert "exception was never retrieved" not in served_model.logs()
