"""The TensorFlow Lite runtime answers as the SavedModel does, and the gate refuses one that does
not. Real conversions of a tiny trained model; a real server on each runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service.gate import check_correctness, check_runtime_agrees
from service.runtime import ModelLoadError, fall_back_to_savedmodel, load_model, warm_up
from service.tflite import ConversionError, TFLitePredictor, convert
from tests.conftest import LiveServer
from training.data import MnistSplits


@pytest.fixture(scope="module")
def version_dir(trained_repository: Path) -> Path:
    return trained_repository / "mnist" / "1"


@pytest.fixture(scope="module")
def conversions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the tests that only need the converted model: one conversion for all."""
    return tmp_path_factory.mktemp("tflite-cache")


def test_tflite_gives_the_savedmodels_digits_on_real_test_digits(
    version_dir: Path, conversions: Path, mnist: MnistSplits
) -> None:
    model = load_model("mnist", 1, version_dir, runtime="tflite", tflite_cache=conversions)
    savedmodel = load_model("mnist", 1, version_dir, runtime="savedmodel")
    assert (model.runtime, savedmodel.runtime) == ("tflite", "savedmodel")
    assert model.signature_outputs == savedmodel.signature_outputs == ("probabilities", "unsure")
    assert model.reference is not None
    assert check_runtime_agrees(model) <= 1e-4
    assert check_correctness(model, margin=0.1) > 0.5
    images = mnist.test_images[:300, ..., None].astype(np.float32)
    for size in (1, 7, 300, 32, 1):  # the interpreter is resized as batch sizes change
        served, reference = model.predict(images[:size]), savedmodel.predict(images[:size])
        assert served.shape == (size, 10)
        assert np.abs(served - reference).max() <= 1e-4
        assert (served.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert [size for size, _ in warm_up(model, (1, 4))] == [1, 4]


def test_the_tflite_runtime_never_loads_the_savedmodel_in_the_server(
    version_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its objects would stay in the server's heap across hot reloads (see `load_model`): the
    child process that converts it also answers for it."""
    import tensorflow as tf

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the SavedModel was loaded in the serving process")

    monkeypatch.setattr(tf.saved_model, "load", refuse)
    model = load_model("mnist", 1, version_dir, runtime="auto")
    assert model.runtime == "tflite"
    assert model.signature_outputs == ("probabilities", "unsure")
    assert check_runtime_agrees(model) <= 1e-4


def test_only_the_probabilities_are_converted(version_dir: Path, conversions: Path) -> None:
    """The version's signature also has `unsure` (a calibrated export); the service computes the
    flag itself, so the converted model has the one float output and no work for the other."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    assert set(signature.structured_outputs) == {"probabilities", "unsure"}
    interpreter = tf.lite.Interpreter(model_content=convert(version_dir, conversions).content)
    (output,) = interpreter.get_output_details()
    assert output["dtype"] == np.float32
    assert list(output["shape"]) == [1, 10]


def test_conversions_are_cached_by_the_versions_content(version_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = convert(version_dir, cache)
    (entry,) = cache.iterdir()
    with np.load(entry) as stored:  # what the cache holds is what the next load gets
        arrays = dict(stored)
    with entry.open("wb") as file:
        np.savez(file, **{**arrays, "reference": arrays["reference"] + 1})
    assert np.array_equal(convert(version_dir, cache).reference, first.reference + 1)
    entry.write_bytes(entry.read_bytes()[:100])  # a damaged entry is converted again
    again = convert(version_dir, cache)
    assert again.content == first.content
    assert np.array_equal(again.reference, first.reference)
    changed = tmp_path / "changed"
    shutil.copytree(version_dir, changed)
    (changed / "metadata.json").write_text("{}")  # any file of the version changes the key
    assert convert(changed, cache).content == first.content
    assert len(list(cache.iterdir())) == 2


def test_a_version_that_cannot_be_converted_is_a_load_error(tmp_path: Path) -> None:
    """Not a SavedModel at all: unservable on any runtime, with the reason loading gives."""
    (tmp_path / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(ModelLoadError, match="cannot load the SavedModel") as error:
        convert(tmp_path, None)
    assert not isinstance(error.value, ConversionError)  # `auto` does not fall back for it


def test_a_runtime_that_answers_differently_is_refused(
    version_dir: Path, conversions: Path
) -> None:
    """A real converted model that differs: weights quantised to 8 bits."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(version_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    model = load_model("mnist", 1, version_dir, runtime="tflite", tflite_cache=conversions)
    model.predict = TFLitePredictor(converter.convert(), threads=1)
    with pytest.raises(ModelLoadError, match="does not answer as the SavedModel does") as error:
        check_runtime_agrees(model)
    fall_back_to_savedmodel(model, str(error.value))  # what the `auto` runtime does then
    assert model.runtime == "savedmodel"
    assert model.reference is None
    assert check_runtime_agrees(model) == 0.0
    assert model.predict(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


def test_a_server_on_the_tflite_runtime_answers_what_tensorflow_answers(
    start_server: object,
    trained_repository: Path,
    digits: np.ndarray,
    expected_digits: list[int],
    tmp_path: Path,
) -> None:
    cache = tmp_path / "tflite-cache"
    server: LiveServer = start_server(  # type: ignore[operator]
        trained_repository, MNIST_RUNTIME="tflite", MNIST_TFLITE_CACHE_DIR=str(cache)
    )
    assert [entry.suffix for entry in cache.iterdir()] == [".npz"]
    with server.client() as client:
        answer = client.post("/v1/predict", json={"instances": digits.tolist()}).json()
        assert [p["digit"] for p in answer["predictions"]] == expected_digits
        raw = client.post(
            "/v1/predict",
            content=digits.tobytes(),
            headers={"content-type": "application/octet-stream"},
        ).json()
        assert raw == answer
    assert "on the tflite runtime" in server.logs()


def test_an_unknown_runtime_is_a_settings_error() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError):
        Settings(runtime="onnx")  # type: ignore[arg-type]
