"""The drawing page in real headless Chromium: draw a digit stroke by stroke, classify, see it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import LiveServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium); CI always has it",
        allow_module_level=True,
    )


def test_draw_a_one_and_see_the_prediction_and_chart(served_model: LiveServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
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
        page = browser.new_page(viewport={"width": 420, "height": 900})  # a phone-sized screen
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(served_model.url + "/")
        expect(page.get_by_role("button", name="Classify")).to_be_visible()
        box = page.locator("#pad").bounding_box()
        assert box is not None
        # A "7": the top bar, then the diagonal, as two strokes.
        strokes = [[(0.3, 0.25), (0.7, 0.25)], [(0.7, 0.25), (0.62, 0.5), (0.5, 0.8)]]
        for stroke in strokes:
            x, y = stroke[0]
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
            page.mouse.up()
        page.get_by_role("button", name="Classify").click()
        expect(page.locator("#confidence")).to_contain_text("sure", timeout=15_000)
        digit = page.locator("#digit").inner_text()
        assert digit in list("0123456789")
        widths = page.locator(".bar .fill").evaluate_all("els => els.map(e => e.style.width)")
        assert len(widths) == 10
        assert any(w not in ("", "0", "0%") for w in widths)
        expect(page.locator("#seen")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

        page.keyboard.press("Tab")
        page.locator("#pad").focus()
        page.keyboard.press("Escape")
        expect(page.locator("#digit")).to_have_text("\u2013")  # the en dash of an empty result
        browser.close()
    assert failed == [], f"requests failed (nothing may come from outside): {failed}"
