"""The TensorFlow part alone: load a SavedModel version, check its contract, warm it, predict."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from service.allocator import suit_tensorflow

if TYPE_CHECKING:
    from service.tflite import Conversion

log = logging.getLogger("service.runtime")

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
UNSURE_NAME = "unsure"
DEFAULT_UNSURE_BELOW = 0.9
"""For versions exported before calibration: answers below this confidence are flagged unsure."""
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class ModelLoadError(RuntimeError):
    """A version directory that cannot be served: missing files, wrong signature, bad metadata."""


Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


class SavedModelPredictor:
    """The SavedModel's serving signature, called as TensorFlow serves it."""

    def __init__(self, loaded: Any, signature: Any) -> None:
        self.loaded = loaded  # the signature dies with the loaded object
        self.signature = signature
        self.outputs: tuple[str, ...] = tuple(sorted(signature.structured_outputs))

    def __call__(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The input goes in as a keyword: a concrete function called positionally takes a slow
        path (about 5 ms instead of 0.3 ms per call, measured here)."""
        import tensorflow as tf

        outputs = self.signature(**{INPUT_NAME: tf.convert_to_tensor(images)})
        result: npt.NDArray[np.float32] = outputs[OUTPUT_NAME].numpy()
        return result


def load_savedmodel(path: Path) -> SavedModelPredictor:
    """The version's serving signature, checked; `ModelLoadError` for anything unservable."""
    suit_tensorflow()
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for corrupt files
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {exc}") from exc
    signature = loaded.signatures.get(SIGNATURE_NAME)
    if signature is None:
        raise ModelLoadError(f"{path}: no '{SIGNATURE_NAME}' signature")
    _check_signature(path, signature)
    return SavedModelPredictor(loaded, signature)


@dataclass
class LoadedModel:
    """One version in memory. `predict` is called from the batcher's worker thread."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    load_seconds: float
    runtime: str
    predict: Predict
    """(N, 28, 28, 1) float32 in 0-255 -> (N, 10) probabilities."""
    reference: npt.NDArray[np.float32] | None = None
    """The SavedModel's answers to the gate's images (`gate.agreement_images`), computed where
    the version was converted, until the converted runtime's answers are checked against them."""
    call_seconds: list[tuple[int, float]] = field(default_factory=list)
    """Measured (batch size, seconds) of warm calls, to seed the batcher's cost model."""
    unsure_below: float = DEFAULT_UNSURE_BELOW
    """Answers less confident than this are flagged unsure (recorded at export)."""
    signature_outputs: tuple[str, ...] = (OUTPUT_NAME,)
    """The serving signature's outputs: TensorFlow Serving's API answers with these."""


_TENSORFLOW_IMPORT = threading.Lock()


def import_tensorflow() -> Any:
    """TensorFlow, imported by whichever thread asks first while the others wait: two threads
    importing it at once (the model loader and the gRPC server's start) hung the process."""
    with _TENSORFLOW_IMPORT:
        import tensorflow as tf
    return tf


@functools.cache
def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Once per process: TensorFlow refuses thread changes after its first op."""
    tf = import_tensorflow()

    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        log.warning("TensorFlow threads already fixed for this process; thread settings ignored")


def deprioritise_compute_threads(niceness: int) -> int:
    """Schedule TensorFlow's compute threads `niceness` steps below the rest; return how many.

    The event loop and the model share the server's cores. At equal priority the kernel
    time-slices them, so a request arriving while a batch computes waits for the loop's next
    slice (refusals under overload took ~20 ms at p99). Niced, the compute threads run whenever
    the loop has nothing to do, which is most of the time, and yield to it at once when a
    request arrives. These are TensorFlow's own pools (`tf_*`, pure C++); TensorFlow Lite
    computes on the thread that calls it, niced by `lower_thread_priority`. Linux only;
    elsewhere nothing happens.
    """
    tasks = Path("/proc/self/task")
    if niceness <= 0 or not tasks.is_dir():
        return 0
    changed = 0
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().startswith("tf_"):
                changed += _lower(int(task.name), niceness)
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return changed


def lower_thread_priority(niceness: int) -> None:
    """Schedule the calling thread `niceness` steps lower: the batcher's model thread.

    It holds Python's GIL only between model calls (copying a batch in and the answers out); a
    niced holder cannot keep the event loop waiting, because a loop waiting for the GIL is not
    runnable and leaves the core to it."""
    if niceness > 0 and hasattr(os, "setpriority"):
        _lower(threading.get_native_id(), niceness)


def _lower(tid: int, niceness: int) -> int:
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(current + niceness, 19))
    except OSError:  # no permission, or the thread ended
        return 0
    return 1


def read_metadata(path: Path) -> dict[str, Any]:
    metadata_path = path / "metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{metadata_path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{metadata_path} is unreadable: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{metadata_path} is not a JSON object")
    return metadata


def load_model(
    name: str,
    version: int,
    path: Path,
    runtime: str = "savedmodel",
    threads: int = 0,
    tflite_cache: Path | None = None,
) -> LoadedModel:
    """Load and check the serving signature; raise `ModelLoadError` for anything unservable.

    With `runtime` "tflite" or "auto" the SavedModel is converted in a child process
    (service/tflite.py), which also checks its signature and records its answers for the gate:
    the SavedModel itself never loads into the server then. Loaded here, its objects cost ~100
    MiB, and every hot reload under traffic left the heap more fragmented (RSS 613-674 MiB over
    30 reloads against a flat 546 MiB for the interpreter alone, measured). `auto` loads it here
    only if the conversion fails (`Settings.runtime`)."""
    started = time.monotonic()
    metadata = read_metadata(path)
    unsure_below = recorded_unsure_threshold(path, metadata)
    converted = _converted(path, version, runtime, threads, tflite_cache)
    if converted is not None:
        predict, conversion = converted
        used, reference, outputs = "tflite", conversion.reference, conversion.signature_outputs
    else:
        predict = savedmodel = load_savedmodel(path)
        used, reference, outputs = "savedmodel", None, savedmodel.outputs
    return LoadedModel(
        name,
        version,
        path,
        metadata,
        time.monotonic() - started,
        used,
        predict,
        reference=reference,
        unsure_below=unsure_below,
        signature_outputs=outputs,
    )


def _converted(
    path: Path, version: int, runtime: str, threads: int, tflite_cache: Path | None
) -> tuple[Predict, Conversion] | None:
    """The TensorFlow Lite runtime and what it was made from, or None: the SavedModel's to serve
    (`runtime` "savedmodel", or "auto" with a version that did not convert)."""
    if runtime == "savedmodel":
        return None
    from service.tflite import ConversionError, TFLitePredictor, convert

    try:
        conversion = convert(path, tflite_cache)
        return TFLitePredictor(conversion.content, threads), conversion
    except ConversionError as exc:
        if runtime != "auto":
            raise
        _warn_fallback(str(exc), version)
        return None


def recorded_unsure_threshold(path: Path, metadata: dict[str, Any]) -> float:
    """The threshold export chose on validation data, or the default for older versions."""
    calibration = metadata.get("calibration")
    if not isinstance(calibration, dict) or "unsure_below" not in calibration:
        return DEFAULT_UNSURE_BELOW
    threshold = calibration["unsure_below"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ModelLoadError(f"{path}: calibration.unsure_below is not a number: {threshold!r}")
    if not 0 <= threshold <= 1:
        raise ModelLoadError(f"{path}: calibration.unsure_below {threshold} is not in [0, 1]")
    return float(threshold)


def fall_back_to_savedmodel(model: LoadedModel, reason: str) -> None:
    """`auto` keeps serving, on TensorFlow, a version whose conversion answers differently."""
    _warn_fallback(reason, model.version)
    model.predict, model.reference, model.runtime = load_savedmodel(model.path), None, "savedmodel"


def _warn_fallback(reason: str, version: int) -> None:
    log.warning("%s; serving version %d with the SavedModel runtime", reason, version)


def warm_up(model: LoadedModel, batch_sizes: tuple[int, ...]) -> list[tuple[int, float]]:
    """Run each batch size: the first calls pay for graph optimisation and allocation; the
    second, timed, says what a call of that size costs once warm."""
    timings = []
    for size in batch_sizes:
        images = np.zeros((size, *IMAGE_SHAPE), np.float32)
        probabilities = model.predict(images)
        if probabilities.shape != (size, NUM_CLASSES) or not np.all(np.isfinite(probabilities)):
            raise ModelLoadError(
                f"{model.path}: warm-up returned shape {probabilities.shape} or non-finite values"
            )
        started = time.perf_counter()
        model.predict(images)
        timings.append((size, time.perf_counter() - started))
    return timings


def _check_signature(path: Path, signature: Any) -> None:
    _, kwargs = signature.structured_input_signature
    spec = kwargs.get(INPUT_NAME)
    if spec is None or len(kwargs) != 1:
        raise ModelLoadError(
            f"{path}: signature inputs are {sorted(kwargs)}, expected exactly '{INPUT_NAME}'"
        )
    if spec.dtype.name != "float32" or tuple(spec.shape.as_list()[1:]) != IMAGE_SHAPE:
        raise ModelLoadError(
            f"{path}: input '{INPUT_NAME}' is {spec.dtype.name}{spec.shape}, "
            f"expected float32(None, 28, 28, 1)"
        )
    outputs = signature.structured_outputs
    if OUTPUT_NAME not in outputs:
        raise ModelLoadError(f"{path}: signature has no '{OUTPUT_NAME}' output")
    unknown = sorted(set(outputs) - {OUTPUT_NAME, UNSURE_NAME})
    if unknown:
        raise ModelLoadError(
            f"{path}: signature outputs {unknown} are unknown; expected '{OUTPUT_NAME}' "
            f"(and '{UNSURE_NAME}')"
        )
