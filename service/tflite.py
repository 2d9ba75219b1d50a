"""A second runtime for the same model: the SavedModel converted to TensorFlow Lite at load.

For a model this small the arithmetic is a fraction of what a SavedModel call costs: TensorFlow's
eager dispatch takes ~0.5 ms per call at batch 1 for ~0.15 ms of work. The TFLite interpreter
with its XNNPACK kernels runs the same graph in ~0.18 ms at batch 1 and ~10% faster at batch 32
(`bench/runtime_ceiling.py`). The SavedModel stays the export format: the conversion happens
in the server, from the version directory, and the correctness gate compares the converted
model's answers with the SavedModel's before the version serves (service/gate.py).

`tf.lite.Interpreter` is used as TensorFlow 2.21 ships it (deprecated in favour of the
`ai-edge-litert` package, which has the same class; not needed while TensorFlow still has it).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.runtime import INPUT_NAME, OUTPUT_NAME, ModelLoadError, import_tensorflow


class TFLitePredictor:
    """One interpreter, resized when the batch size changes (a resize costs ~0.05 ms, measured).

    Called from one thread at a time (the version's batcher worker; warm-up and the gate before
    it exists); the lock makes a mistake there an error-free wait rather than a corrupt answer.
    """

    def __init__(self, model_content: bytes, threads: int) -> None:
        tf = import_tensorflow()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice, once per version
            self._interpreter = tf.lite.Interpreter(
                model_content=model_content, num_threads=threads or None
            )
        inputs = self._interpreter.get_input_details()
        outputs = {o["name"]: o for o in self._interpreter.get_output_details()}
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"converted model has {len(inputs)} inputs and {len(outputs)} outputs; "
                f"expected '{INPUT_NAME}' and '{OUTPUT_NAME}' only"
            )
        self._input = inputs[0]["index"]
        self._output = next(iter(outputs.values()))["index"]
        self._batch = 0
        self._lock = threading.Lock()

    def __call__(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        interpreter = self._interpreter
        with self._lock:
            if len(images) != self._batch:
                interpreter.resize_tensor_input(self._input, images.shape)
                interpreter.allocate_tensors()
                self._batch = len(images)
            interpreter.set_tensor(self._input, np.ascontiguousarray(images, np.float32))
            interpreter.invoke()
            result: npt.NDArray[np.float32] = interpreter.get_tensor(self._output)
        return result


def convert(path: Path) -> bytes:
    """The version's serving signature as a float32 TFLite flatbuffer (no quantisation: the
    answers must match the SavedModel's)."""
    tf = import_tensorflow()
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path))
        content: Any = converter.convert()
    except Exception as exc:  # the converter raises many types for unsupported graphs
        raise ModelLoadError(f"{path}: cannot convert to TensorFlow Lite: {exc}") from exc
    return bytes(content)
