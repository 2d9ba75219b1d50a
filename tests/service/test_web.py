"""The drawing page and the API docs in real headless Chromium, with nothing allowed off the host.

The page is served by a real server over a small model good enough to read drawn digits (a few
seconds of training on 10,000 real digits), so the test can check that the digit drawn is the
digit predicted, not just that some digit came back.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, launch_server, stop_server, tiny_train_config
from training.config import ModelConfig
from training.data import MnistSplits

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PHONE = {"width": 390, "height": 844}
PAUSE_S = 0.8  # the page's PAUSE_MS

if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium); CI always has it",
        allow_module_level=True,
    )

# Strokes in the pad's unit square, as a person draws them.
SEVEN = [[(0.3, 0.25), (0.7, 0.25)], [(0.7, 0.25), (0.62, 0.5), (0.5, 0.8)]]
ONE = [[(0.5, 0.2), (0.49, 0.5), (0.48, 0.8)]]
ZERO = [
    [
        (0.5, 0.2), (0.36, 0.27), (0.3, 0.45), (0.32, 0.65), (0.42, 0.78), (0.55, 0.8),
        (0.66, 0.7), (0.7, 0.5), (0.66, 0.3), (0.57, 0.21), (0.5, 0.2),
    ]
]  # fmt: skip
FOUR_FIRST = [(0.38, 0.2), (0.3, 0.55), (0.72, 0.55)]
FOUR_SECOND = [(0.6, 0.3), (0.6, 0.55), (0.6, 0.85)]


@pytest.fixture(scope="module")
def page_repository(tmp_path_factory: pytest.TempPathFactory, mnist: MnistSplits) -> Path:
    from training.train import run

    repository = tmp_path_factory.mktemp("web-repository")
    model = ModelConfig(
        blocks=2, filters=8, dense_units=32, dropout=0.0, dense_dropout=0.0, batch_norm=False
    )
    run(tiny_train_config(repository, limit=10_000, epochs=3, augment=True, model=model), mnist)
    return repository


@pytest.fixture(scope="module")
def page_server(
    tmp_path_factory: pytest.TempPathFactory, page_repository: Path
) -> Iterator[LiveServer]:
    server = launch_server(page_repository, tmp_path_factory.mktemp("web-logs") / "server.log")
    yield server
    stop_server(server)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


def offline_page(browser: Any, **options: Any) -> tuple[Any, list[str]]:
    """A page that may reach 127.0.0.1 only; what it tried elsewhere is listed."""
    page = browser.new_page(**options)
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    return page, outside


def draw(page: Any, strokes: list[list[tuple[float, float]]], between_s: float = 0.2) -> None:
    box = page.locator("#pad").bounding_box()
    for index, stroke in enumerate(strokes):
        if index:
            page.wait_for_timeout(between_s * 1000)
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


def predicted(page: Any) -> str:
    from playwright.sync_api import expect

    expect(page.locator("#confidence")).to_contain_text("sure", timeout=15_000)
    return str(page.locator("#digit").inner_text())


def test_drawn_digits_are_read_as_drawn(page_server: LiveServer, browser: Any) -> None:
    from playwright.sync_api import expect

    page, outside = offline_page(browser, viewport=PHONE)
    page.goto(page_server.url + "/")
    expect(page.get_by_role("button", name="Classify")).to_be_visible()
    for expected, strokes in (("7", SEVEN), ("1", ONE), ("0", ZERO)):
        page.locator("#pad").focus()
        page.keyboard.press("Escape")
        expect(page.locator("#digit")).to_have_text("?")
        draw(page, strokes)
        got = predicted(page)
        assert got == expected, f"drew a {expected}"
        shares = page.locator(".bar .fill").evaluate_all(
            "els => els.map(e => parseFloat(e.style.getPropertyValue('--p')))"
        )
        assert len(shares) == 10
        assert max(shares) == shares[int(expected)] > 50
        expect(page.locator("#seen")).to_be_visible()
    # On a phone the answer is on the first screen: the digit and all ten bars, no scrolling.
    bars = page.locator("#bars").bounding_box()
    assert bars["y"] + bars["height"] <= PHONE["height"], bars
    assert page.evaluate("window.scrollY") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-phone.png"))
    assert outside == []


def test_a_digit_of_two_strokes_is_classified_once_the_pen_rests(
    page_server: LiveServer, browser: Any
) -> None:
    from playwright.sync_api import expect

    page, outside = offline_page(browser, viewport={"width": 1000, "height": 800})
    asked: list[float] = []
    page.on(
        "request", lambda r: asked.append(time.monotonic()) if "/predict/image" in r.url else None
    )
    page.goto(page_server.url + "/")
    expect(page.locator("#pause-seconds")).to_have_text(str(PAUSE_S))
    box = page.locator("#pad").bounding_box()

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    # The first stroke of a 4, a pause shorter than the page's, then the second stroke, held
    # still mid-stroke for longer than the pause: nothing may be classified until the pen lifts.
    draw(page, [FOUR_FIRST])
    page.wait_for_timeout(PAUSE_S * 1000 - 300)
    page.mouse.move(*at(*FOUR_SECOND[0]))
    page.mouse.down()
    page.mouse.move(*at(*FOUR_SECOND[1]), steps=6)
    page.wait_for_timeout(PAUSE_S * 1000 + 400)
    assert asked == [], "classified while a stroke was being drawn"
    page.mouse.move(*at(*FOUR_SECOND[2]), steps=6)
    lifted = time.monotonic()
    page.mouse.up()
    assert predicted(page) == "4"
    assert len(asked) == 1
    assert asked[0] - lifted >= PAUSE_S - 0.05
    assert outside == []


def test_an_unsure_answer_says_not_sure_with_the_top_two_digits(
    page_server: LiveServer, page_repository: Path, browser: Any, tmp_path: Path
) -> None:
    """The same model served with a threshold every answer falls below (MNIST_UNSURE_BELOW=1),
    then the page's own server (its recorded threshold): the flag, and only the flag, decides."""
    from playwright.sync_api import expect

    doubtful = launch_server(page_repository, tmp_path / "server.log", MNIST_UNSURE_BELOW="1")
    try:
        page, outside = offline_page(browser, viewport={"width": 1000, "height": 800})
        page.goto(doubtful.url + "/")
        draw(page, SEVEN)
        confidence = page.locator("#confidence")
        expect(confidence).to_contain_text("Not sure:", timeout=15_000)
        expect(page.locator("#result")).to_have_attribute("data-unsure", "true")
        assert page.locator("#digit").inner_text() == "7?"
        # The two most probable digits, most probable first, with their probabilities.
        shares = page.locator(".bar .pct").all_inner_texts()
        exact = page.locator(".bar .fill").evaluate_all(
            "els => els.map(e => parseFloat(e.style.getPropertyValue('--p')))"
        )
        top_two = sorted(range(10), key=lambda d: -exact[d])[:2]
        text = confidence.inner_text()
        assert text.startswith(f"Not sure: {top_two[0]} ({shares[top_two[0]]}) or {top_two[1]}")
        assert outside == []
    finally:
        stop_server(doubtful)
    page, _ = offline_page(browser, viewport={"width": 1000, "height": 800})
    page.goto(page_server.url + "/")
    draw(page, SEVEN)
    assert predicted(page) == "7"
    expect(page.locator("#result")).to_have_attribute("data-unsure", "false")


def test_an_uploaded_photo_is_shown_beside_what_the_model_saw(
    page_server: LiveServer, browser: Any, mnist: MnistSplits, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    index = int(np.flatnonzero(mnist.test_labels == 3)[0])
    ink = mnist.test_images[index]
    paper = Image.fromarray((255 - ink).astype(np.uint8)).resize((140, 140), Image.BILINEAR)
    path = tmp_path / "three.png"
    buffer = io.BytesIO()
    paper.convert("RGB").save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())

    page, outside = offline_page(browser, viewport={"width": 1000, "height": 800})
    page.goto(page_server.url + "/")
    page.locator("#file").set_input_files(str(path))
    with page_server.client() as client:
        answer = client.post(
            "/v1/predict/image", content=path.read_bytes(), headers={"Content-Type": "image/png"}
        )
    first = answer.json()["predictions"][0]
    # The tiny model is not always sure of it: the page then says so, as "3?".
    assert predicted(page) == f"{first['digit']}{'?' if first['unsure'] else ''}"
    expect(page.locator("#photo")).to_be_visible()
    expect(page.locator("#seen")).to_be_visible()
    natural = page.locator("#photo").evaluate("img => img.naturalWidth")
    assert natural == 140
    page.screenshot(path=str(ARTIFACTS / "web-page-photo.png"))
    assert outside == []


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .info"), ("/redoc", "h1")])
def test_api_docs_render_offline(
    page_server: LiveServer, browser: Any, path: str, rendered: str
) -> None:
    from playwright.sync_api import expect

    page, outside = offline_page(browser)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.failure))
    page.goto(page_server.url + path)
    expect(page.locator(rendered).first).to_contain_text("mnist-serving", timeout=15_000)
    # ReDoc's footer asks a CDN for its logo: the page's Content-Security-Policy stops that in
    # the browser, before any connection, and nothing else may be missing.
    assert outside == []
    assert set(failed) <= {"csp"}, failed
