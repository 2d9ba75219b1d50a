"""Accuracy through `/v1/predict/image` on the 10,000 MNIST test digits rendered as users upload
them, next to the accuracy on the raw test set, on a real server over HTTP.

Each digit becomes dark ink on white paper, enlarged onto a canvas of random size (64 to 512
pixels a side, not always square), off-centre; a ninth each are saved as grayscale PNG, RGB PNG,
RGBA PNG with a transparent background, JPEG (quality 60-95), a "photo": grey pen on dim paper
lit unevenly from a random side, with sensor noise, as a JPEG; a photo with a phone's shadow
across it; and three notebook photos, each a
JPEG turned up to 6 degrees either way: a ruled page (blue rules the digit crosses, a red
margin), a squared page (a grey-blue grid), and a sheet lying on a darker desk.

    python bench/image_accuracy.py --model-repository models [--limit 10000]
"""

from __future__ import annotations

import concurrent.futures
import io
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import arguments, served
from training.data import load_mnist

KINDS = ("png-gray", "png-rgb", "png-rgba", "jpeg", "photo", "shadow", "ruled", "squared", "desk")
PAGE = (236, 236, 228)


def render(digit: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    width, height = int(rng.integers(64, 513)), int(rng.integers(64, 513))
    side = int(min(width, height) * rng.uniform(0.45, 0.95))
    ink = Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    buffer = io.BytesIO()
    if kind in ("ruled", "squared", "desk"):
        notebook(ink, kind, (width, height), (left, top), rng).save(
            buffer, "JPEG", quality=int(rng.integers(70, 96))
        )
        return buffer.getvalue(), "image/jpeg"
    if kind == "shadow":
        shadowed(np.asarray(ink), (width, height), (left, top), rng).save(
            buffer, "JPEG", quality=int(rng.integers(70, 96))
        )
        return buffer.getvalue(), "image/jpeg"
    if kind == "photo":
        photo(np.asarray(ink), (width, height), (left, top), rng).save(
            buffer, "JPEG", quality=int(rng.integers(60, 91))
        )
        return buffer.getvalue(), "image/jpeg"
    if kind == "png-rgba":
        alpha = Image.new("L", (width, height), 0)
        alpha.paste(ink, (left, top))
        pen = (20, 20, 120)  # blue ink on a transparent canvas
        layers = [Image.new("L", (width, height), value) for value in pen]
        Image.merge("RGBA", (*layers, alpha)).save(buffer, "PNG")
        return buffer.getvalue(), "image/png"
    paper = Image.new("L", (width, height), 255)
    paper.paste(Image.fromarray(255 - np.asarray(ink)), (left, top))
    if kind == "png-gray":
        paper.save(buffer, "PNG")
        return buffer.getvalue(), "image/png"
    if kind == "png-rgb":
        paper.convert("RGB").save(buffer, "PNG")
        return buffer.getvalue(), "image/png"
    paper.convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(60, 96)))
    return buffer.getvalue(), "image/jpeg"


def photo(
    ink: np.ndarray, size: tuple[int, int], place: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """Paper from about 110 to 250 grey, darker at the corners, lit from a random direction."""
    width, height = size
    cover = np.zeros((height, width), dtype=np.float32)
    cover[place[1] : place[1] + ink.shape[0], place[0] : place[0] + ink.shape[1]] = ink / 255
    ys, xs = np.indices((height, width)) / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    slope = np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)
    paper = 200 + 50 * slope - 40 * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2)
    pen = rng.uniform(20, 60)
    picture = paper * (1 - cover) + pen * cover + rng.normal(0, 5, cover.shape)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).convert("RGB")


def shadowed(
    ink: np.ndarray, size: tuple[int, int], place: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """A phone's shadow across the sheet: a quarter to half of the light gone beyond an edge
    2-12 pixels soft, at any angle and place."""
    width, height = size
    cover = np.zeros((height, width), dtype=np.float32)
    cover[place[1] : place[1] + ink.shape[0], place[0] : place[0] + ink.shape[1]] = ink / 255
    ys, xs = np.indices((height, width))
    angle = rng.uniform(0, 2 * np.pi)
    across = np.cos(angle) * (xs - width * rng.uniform(0.2, 0.8)) + np.sin(angle) * (
        ys - height * rng.uniform(0.2, 0.8)
    )
    light = 1 - rng.uniform(0.25, 0.5) / (1 + np.exp(-across / rng.uniform(2, 12)))
    picture = (240 * (1 - cover) + rng.uniform(20, 60) * cover) * light
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).convert("RGB")


def notebook(
    ink: Image.Image,
    kind: str,
    size: tuple[int, int],
    place: tuple[int, int],
    rng: np.random.Generator,
) -> Image.Image:
    """A blue or black pen on a page: ruled, squared, or a plain sheet on a desk."""
    width, height = size
    page = Image.new("RGB", size, PAGE)
    draw = ImageDraw.Draw(page)
    if kind == "ruled":  # a digit within a line or two, as in a school notebook
        gap = max(8, int(ink.height * rng.uniform(0.5, 1.1)))
        for y in range(int(rng.integers(0, gap)), height, gap):
            draw.line([(0, y), (width, y)], fill=(130, 160, 215), width=int(rng.integers(1, 3)))
        margin = int(rng.integers(0, max(1, width // 4)))
        draw.line([(margin, 0), (margin, height)], fill=(215, 90, 90), width=2)
    elif kind == "squared":
        gap = max(6, int(ink.height * rng.uniform(0.4, 0.9)))
        for y in range(int(rng.integers(0, gap)), height, gap):
            draw.line([(0, y), (width, y)], fill=(120, 140, 175), width=1)
        for x in range(int(rng.integers(0, gap)), width, gap):
            draw.line([(x, 0), (x, height)], fill=(120, 140, 175), width=1)
    pen = (25, 40, 140) if rng.random() < 0.5 else (25, 25, 30)
    page.paste(Image.new("RGB", ink.size, pen), place, ink)
    tilt = float(rng.uniform(-6, 6))
    if kind != "desk":
        return page.rotate(tilt, resample=Image.Resampling.BILINEAR, fillcolor=PAGE)
    desk_colour = tuple(int(c) for c in rng.integers(40, 120, size=3))
    sheet = page.rotate(
        tilt, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=desk_colour
    )
    desk = Image.new("RGB", (int(sheet.width * 1.3), int(sheet.height * 1.3)), desk_colour)
    desk.paste(
        sheet,
        (
            int(rng.integers(0, desk.width - sheet.width + 1)),
            int(rng.integers(0, desk.height - sheet.height + 1)),
        ),
    )
    return desk


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not any((args.model_repository / "mnist").glob("[0-9]*")):
        sys.exit(f"no model in {args.model_repository}: run `make train` first")
    mnist = load_mnist(args.data_dir)
    images, labels = mnist.test_images[: args.limit], mnist.test_labels[: args.limit]
    rng = np.random.default_rng(args.seed)
    uploads = [render(d, KINDS[i % len(KINDS)], rng) for i, d in enumerate(images)]

    started = time.monotonic()
    with served(args.model_repository, 18103, "0-1") as server:
        url = server.url

        def post(client: httpx.Client, path: str, **body: Any) -> httpx.Response:
            answer = client.post(path, **body)
            while answer.status_code in (503, 504):  # refused or timed out under load: again
                time.sleep(float(answer.headers.get("retry-after", 1)))
                answer = client.post(path, **body)
            return answer

        raw: list[int] = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(0, len(images), 256):
                body = {"instances": images[i : i + 256].tolist()}
                answer = post(client, "/v1/predict", json=body)
                raw += [p["digit"] for p in answer.json()["predictions"]]

        def classify(start: int) -> list[int]:
            files = [
                ("file", (f"{j}", data, media))
                for j, (data, media) in enumerate(uploads[start : start + args.batch])
            ]
            with httpx.Client(base_url=url, timeout=120) as client:
                answer = post(client, "/v1/predict/image", files=files)
                if answer.status_code != 422:
                    answer.raise_for_status()
                    return [p["digit"] for p in answer.json()["predictions"]]
                # One upload refused ("no digit") refuses its batch: one by one, refused = wrong.
                digits = []
                for upload in files:
                    alone = post(client, "/v1/predict/image", files=[upload])
                    digits.append(
                        alone.json()["predictions"][0]["digit"] if alone.is_success else -1
                    )
                return digits

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            chunks = list(pool.map(classify, range(0, len(uploads), args.batch)))
    uploaded = [digit for chunk in chunks for digit in chunk]
    raw_accuracy = float(np.mean(np.array(raw) == labels))
    upload_accuracy = float(np.mean(np.array(uploaded) == labels))
    print(f"images={len(labels)} seconds={time.monotonic() - started:.0f}")
    print(f"raw_accuracy={raw_accuracy:.4f}")
    print(f"upload_accuracy={upload_accuracy:.4f}")
    for k, kind in enumerate(KINDS):
        picked = np.arange(k, len(labels), len(KINDS))
        kind_accuracy = np.mean(np.array(uploaded)[picked] == labels[picked])
        print(f"upload_accuracy_{kind.replace('-', '_')}={kind_accuracy:.4f}")
    print(f"gap_percentage_points={(raw_accuracy - upload_accuracy) * 100:.2f}")


if __name__ == "__main__":
    main()
