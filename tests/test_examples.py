"""The sample images in examples/ are what examples/make_examples.py makes from MNIST."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import MnistSplits

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_examples_are_made_by_the_script(tmp_path: Path, mnist: MnistSplits) -> None:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write(tmp_path, mnist.source)
    assert len(written) == 13
    for path in written:
        shipped = EXAMPLES / path.relative_to(tmp_path)
        made = np.asarray(Image.open(path).convert("L"), dtype=np.int16)
        kept = np.asarray(Image.open(shipped).convert("L"), dtype=np.int16)
        assert made.shape == kept.shape, shipped
        # Lossy encoders may differ by a step between library builds; the pictures may not.
        assert np.abs(made - kept).max() <= 3, shipped
