"""End to end on a few hundred real digits: train, export versions 1 and 2, reload, compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_train_config
from training import export
from training.data import MnistSplits
from training.extra_data import ExtraConfig, LabelledImages
from training.train import run


def test_two_runs_export_versions_that_tensorflow_reloads(
    tmp_path: Path, mnist: MnistSplits
) -> None:
    first = run(tiny_train_config(tmp_path, limit=400, epochs=1), mnist)
    second = run(tiny_train_config(tmp_path, limit=400, epochs=1, reports=True), mnist)
    assert (first.version, second.version) == (1, 2)
    model_dir = tmp_path / "mnist"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]  # no staging left

    version_dir = model_dir / "2"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["version"] == 2
    assert metadata["signature_name"] == "serving_default"
    assert metadata["input"]["shape"] == [-1, 28, 28, 1]
    assert set(metadata["per_class"]) == {str(d) for d in range(10)}
    assert metadata["parameters"] == second.parameters
    assert metadata["dataset_sha256"]["t10k-images-idx3-ubyte"].startswith("0fa7898d")
    assert metadata["test_accuracy"] == pytest.approx(second.evaluation.accuracy, abs=1e-6)
    for report in (
        "training_curves.png",
        "confusion_matrix.png",
        "samples.png",
        "hardest_foreign.png",
    ):
        assert (version_dir / report).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calibration = metadata["calibration"]
    assert calibration["temperature"] == second.calibration.temperature
    assert 0 < calibration["unsure_below"] == second.calibration.unsure_below <= 1
    for figures in ("mnist_validation", "mnist_test", "foreign_held_in", "foreign_held_out"):
        assert set(calibration[figures]) >= {"images", "accuracy", "ece_before", "ece_after"}
    assert calibration["not_digits_held_out"]["images"] > 20
    assert set(metadata["robustness"]["accuracy"]) == {
        "none", "thick", "thin", "swollen", "fractured", "slanted", "elastic"
    }  # fmt: skip
    assert metadata["extra_outputs"] == [export.UNSURE_SPEC]

    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures["serving_default"]
    images = mnist.test_images[:50, ..., None].astype(np.float32)
    outputs = signature(image=tf.constant(images))
    served = outputs["probabilities"].numpy()
    # The temperature is in the graph: softmax(logits / T) of the model in memory.
    logits = np.asarray(export.logits_of(second.model)(images, training=False), np.float64)
    scaled = np.exp((logits - logits.max(axis=1, keepdims=True)) / second.calibration.temperature)
    np.testing.assert_allclose(served, scaled / scaled.sum(axis=1, keepdims=True), atol=1e-5)
    assert (served.argmax(1) == second.evaluation.predicted[:50]).all()
    unsure = outputs["unsure"].numpy()
    assert unsure.dtype == bool
    assert (unsure == (served.max(axis=1) < second.calibration.unsure_below)).all()


def test_failed_export_leaves_no_version_and_no_staging(
    tmp_path: Path, mnist: MnistSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "publish", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        run(tiny_train_config(tmp_path, limit=300, epochs=1), mnist)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_publish_skips_a_version_taken_meanwhile(tmp_path: Path) -> None:
    model_dir = tmp_path / "mnist"
    with export.staging_directory(model_dir) as staging:
        (staging / "metadata.json").write_text("{}")
        (model_dir / "1").mkdir()
        (model_dir / "1" / "saved_model.pb").write_text("someone else's")
        version, path = export.publish(staging, model_dir)
    assert version == 2
    assert json.loads((path / "metadata.json").read_text())["version"] == 2


def test_a_full_disk_during_export_fails_cleanly_and_publishes_nothing(tmp_path: Path) -> None:
    """The real CLI, with the kernel refusing writes past 64 KiB (RLIMIT_FSIZE: the same failed
    write a full disk gives): a clear error, a non-zero exit, no version, no staging left."""
    import resource
    import signal
    import subprocess
    import sys

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process

    repository = tmp_path / "models"
    result = subprocess.run(
        [sys.executable, "-m", "training", "--model-repository", str(repository),
         "--limit", "300", "--epochs", "1", "--no-reports", "--quiet", "--no-augment",
         "--no-extra-data",
         "--blocks", "1", "--filters", "16", "--dense-units", "64"],
        capture_output=True, text=True, preexec_fn=small_disk, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-train: could not write the model into"), last
    assert "File too large" in last
    assert "nothing was published" in last
    model_dir = repository / "mnist"
    left = sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []
    assert left == [], left


@pytest.mark.parametrize(
    ("augment", "perturbed_share"), [(True, 0.5), (False, 0.0)], ids=["distorted", "as-they-are"]
)
def test_the_clean_epochs_see_the_digits_as_they_are(
    tmp_path: Path, mnist: MnistSplits, augment: bool, perturbed_share: float
) -> None:
    """Augmented and perturbed epochs first, then `clean_epochs` of the unchanged images (and the
    extras), in one stream of equal epochs; with nothing distorted, every epoch is clean."""
    from training.train import make_datasets

    extras = LabelledImages(np.full((6, 28, 28), 200, np.uint8), np.full((6, 10), 0.1, np.float32))
    config = tiny_train_config(
        tmp_path, limit=200, epochs=3, clean_epochs=1, augment=augment,
        extra=ExtraConfig(perturbed_share=perturbed_share), batch_size=32,
    )  # fmt: skip
    datasets = make_datasets(mnist, config, extras)
    batches = list(datasets.train.as_numpy_iterator())
    assert len(batches) == 3 * datasets.steps_per_epoch
    validation = {image.tobytes() for image in datasets.mnist_validation.images}
    expected = sorted(
        image.tobytes()
        for image in np.concatenate([mnist.train_images[:200], extras.images])
        if image.tobytes() not in validation
    )

    def epoch_images(epoch: int) -> list[bytes]:
        steps = slice(epoch * datasets.steps_per_epoch, (epoch + 1) * datasets.steps_per_epoch)
        images = np.concatenate([x for x, _ in batches[steps]])[..., 0]
        return sorted(image.astype(np.uint8).tobytes() for image in images)

    assert epoch_images(2) == expected  # the last epoch: every image exactly as it is
    if augment:
        assert epoch_images(0) != expected  # augmented (and half of them perturbed)
    else:
        assert epoch_images(0) == expected


def test_the_clean_epochs_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from training.__main__ import parse_args

    assert parse_args([])[0].clean_epochs == 2
    assert parse_args(["--clean-epochs", "0"])[0].clean_epochs == 0
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--clean-epochs", "-1"])
    assert exit_info.value.code == 2
    assert "--clean-epochs must be 0 or more" in capsys.readouterr().err


def test_a_limited_run_renders_its_share_of_the_extras() -> None:
    """`--limit` is for quick runs: the extras shrink with MNIST, so the mix stays the full
    run's (a thousand digits beside 8,600 rendered pictures took a minute to render and taught
    mostly fonts)."""
    from training.__main__ import parse_args

    full = ExtraConfig()
    assert parse_args([])[0].extra == full
    assert parse_args(["--limit", "60000"])[0].extra == full
    half = parse_args(["--limit", "30000"])[0].extra
    assert half is not None
    assert (half.per_drawn_style, half.not_digits_per_kind) == (50, 200)
    assert half.calibration_per_font_digit == full.calibration_per_font_digit
    tiny = parse_args(["--limit", "10"])[0].extra
    assert tiny is not None
    assert (tiny.per_font_digit, tiny.per_drawn_style, tiny.not_digits_per_kind) == (1, 1, 1)
    assert parse_args(["--limit", "10", "--no-extra-data"])[0].extra is None
