"""A second runtime for the same model: the SavedModel converted to TensorFlow Lite at load.

For a model this small the arithmetic is a fraction of what a SavedModel call costs: TensorFlow's
eager dispatch takes ~0.5 ms per call at batch 1 for ~0.15 ms of work. The TFLite interpreter
with its XNNPACK kernels runs the same graph in ~0.18 ms at batch 1 and ~10% faster at batch 32
(`bench/runtime_ceiling.py`). The SavedModel stays the export format: each version is converted
as it loads, in a child process that also records the SavedModel's answers to the gate's images,
and the gate compares the converted model's answers with those before the version serves
(service/gate.py). The SavedModel itself never loads into the server (see `load_model`).

`tf.lite.Interpreter` is used as TensorFlow 2.21 ships it (deprecated in favour of the
`ai-edge-litert` package, which has the same class; not needed while TensorFlow still has it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.runtime import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelLoadError,
    import_tensorflow,
    load_savedmodel,
)

log = logging.getLogger("service.tflite")

_CACHE_ENTRIES = 32
"""Converted versions kept; a repository serves a few, so older entries are of versions gone."""
_CONVERSION = b"probabilities only, with the gate's reference answers\0"
"""Part of the cache key: a change to what `_convert_here` makes must not reuse older entries."""


class ConversionError(ModelLoadError):
    """The SavedModel is servable but did not convert: `auto` then serves it on TensorFlow."""


@dataclass(frozen=True)
class Conversion:
    """What the child process made of a version."""

    content: bytes
    """The TFLite flatbuffer."""
    reference: npt.NDArray[np.float32]
    """The SavedModel's probabilities for `gate.agreement_images` of the version."""
    signature_outputs: tuple[str, ...]
    """The serving signature's outputs (TensorFlow Serving's API answers with these)."""


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
        # The converter names outputs after graph tensors, not the signature: the probabilities
        # are the one float output with a row of 10 (an older cache entry also has `unsure`).
        outputs = [
            o
            for o in self._interpreter.get_output_details()
            if o["dtype"] == np.float32 and list(o["shape"][1:]) == [10]
        ]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConversionError(
                f"converted model has {len(inputs)} inputs and {len(outputs)} float outputs "
                f"of 10 columns; expected '{INPUT_NAME}' and '{OUTPUT_NAME}' only"
            )
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
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


def convert(path: Path, cache_dir: Path | None) -> Conversion:
    """The version's serving signature as a float32 TFLite flatbuffer (no quantisation: the
    answers must match the SavedModel's), with what the gate needs to check that.

    A version that is not servable at all (no signature, a wrong one, corrupt files) raises
    `ModelLoadError` as loading it here would; one that is but does not convert,
    `ConversionError`. The output is cached by the version's content (`cache_dir`, when
    writable), so restarts, several workers and unchanged versions convert once."""
    digest = _content_digest(path)
    cached = None if cache_dir is None else cache_dir / f"{digest}.npz"
    if cached is not None and cached.is_file():
        with contextlib.suppress(OSError):
            os.utime(cached)  # recently used: the last to be pruned
        try:
            return _read(cached)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # truncated, altered
            log.warning("TensorFlow Lite cache entry %s unreadable (%s); converting", cached, exc)
    with tempfile.TemporaryDirectory(prefix="mnist-tflite-") as scratch:
        output, error = Path(scratch) / "conversion.npz", Path(scratch) / "error.txt"
        result = subprocess.run(
            [sys.executable, "-m", "service.tflite", str(path), str(output), str(error)],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            check=False,
        )
        if error.is_file():
            raise ModelLoadError(error.read_text())
        if result.returncode != 0 or not output.is_file():
            message = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConversionError(f"{path}: cannot convert to TensorFlow Lite: {message}")
        conversion = _read(output)
        if cached is not None:
            _store(cached, output)
    return conversion


def _read(bundle: Path) -> Conversion:
    with np.load(bundle, allow_pickle=False) as stored:
        content, reference, outputs = stored["tflite"], stored["reference"], stored["outputs"]
    if content.dtype != np.uint8 or reference.dtype != np.float32 or reference.ndim != 2:
        raise ValueError("unexpected arrays")
    return Conversion(content.tobytes(), reference, tuple(str(name) for name in outputs))


def _content_digest(path: Path) -> str:
    """sha256 over the version's files, names and bytes: any change makes a new cache entry."""
    digest = hashlib.sha256(_CONVERSION)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _store(cached: Path, output: Path) -> None:
    """Atomically, in a directory only this user can write; a cache that cannot be written is
    skipped (a read-only file system in a locked-down pod)."""
    try:
        cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if cached.parent.stat().st_uid != os.getuid():
            return
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(output, partial)
        partial.replace(cached)
        entries = sorted(
            # .tflite: entries of releases before the reference answers were cached with them
            (p for p in cached.parent.iterdir() if p.suffix in (".npz", ".tflite")),
            key=lambda p: p.stat().st_mtime,
        )
        for stale in entries[:-_CACHE_ENTRIES]:  # versions long gone: the oldest go first
            stale.unlink(missing_ok=True)
    except OSError:
        log.info("TensorFlow Lite cache %s not writable; converting at every load", cached.parent)


def _convert_here(saved_model: Path, output: Path, error: Path) -> None:
    """The child process: TensorFlow's converter, and the SavedModel's answers for the gate.

    Only the probabilities are converted: the service computes the unsure flag itself (its
    threshold can be overridden), so the signature's `unsure` ops would be work for nothing.
    """
    import tensorflow as tf

    from service.gate import agreement_images

    try:
        savedmodel = load_savedmodel(saved_model)
    except ModelLoadError as exc:  # the version is unservable: the server says why, as is
        error.write_text(str(exc))
        return
    signature = savedmodel.signature
    spec = signature.structured_input_signature[1][INPUT_NAME]

    def probabilities(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: signature(**{INPUT_NAME: image})[OUTPUT_NAME]}

    function = tf.function(probabilities, input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], savedmodel.loaded
    )
    content = np.frombuffer(converter.convert(), np.uint8)
    reference = savedmodel(agreement_images(saved_model)).astype(np.float32)
    with output.open("wb") as file:  # a file object: `savez` would append ".npz" to a name
        np.savez(file, tflite=content, reference=reference, outputs=np.array(savedmodel.outputs))


if __name__ == "__main__":
    _convert_here(*(Path(argument) for argument in sys.argv[1:4]))
