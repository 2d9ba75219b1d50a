"""Writes the sample images the README's commands use, from the official MNIST test digits.

    MNIST_DIR=/data/mnist .venv/bin/python examples/make_examples.py

Each digit is drawn as people upload them: dark ink on white paper, five times MNIST's size,
in the formats the upload endpoint takes. The first test image of each class is used, so the
files are the same on every run (tests/test_examples.py checks that).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_mnist

HERE = Path(__file__).resolve().parent
SCALE = 5
MARGIN = 10


def paper(ink: np.ndarray) -> Image.Image:
    """MNIST's white-on-black 28x28 as dark ink on white, scaled up, with a margin."""
    digit = Image.fromarray((255 - ink).astype(np.uint8), mode="L")
    digit = digit.resize((28 * SCALE, 28 * SCALE), Image.Resampling.BICUBIC)
    sheet = Image.new("L", (28 * SCALE + 2 * MARGIN,) * 2, 255)
    sheet.paste(digit, (MARGIN, MARGIN))
    return sheet


def write(output: Path, data_dir: Path | None = None) -> list[Path]:
    splits = load_mnist(data_dir)
    first = {d: int(np.flatnonzero(splits.test_labels == d)[0]) for d in range(10)}
    pictures = {d: paper(splits.test_images[i]) for d, i in first.items()}
    written = []
    (output / "digits").mkdir(parents=True, exist_ok=True)
    for digit, picture in pictures.items():
        path = output / "digits" / f"{digit}.png"
        picture.save(path, optimize=True)
        written.append(path)
    # The README's upload examples: one per format family.
    examples = {
        "digit.png": (pictures[7], {"optimize": True}),
        "one.jpg": (pictures[1].convert("RGB"), {"quality": 90}),
        "two.webp": (pictures[2], {"quality": 90, "method": 6}),
    }
    for name, (picture, options) in examples.items():
        picture.save(output / name, **options)
        written.append(output / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=HERE, help="default: examples/")
    parser.add_argument("--data-dir", type=Path, help="MNIST files (default: MNIST_DIR)")
    args = parser.parse_args()
    for path in write(args.output, args.data_dir):
        print(path)


if __name__ == "__main__":
    main()
