"""The training pipeline, top to bottom: data, model, fit, evaluate, report, export."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from training import extra_data, generalisation
from training.calibration import Calibration, calibrate, calibration_report, softmax
from training.config import TrainConfig
from training.data import MnistSplits, load_mnist
from training.evaluate import Evaluation, evaluate_probabilities
from training.export import export_version, logits_of
from training.extra_data import ExtraConfig, LabelledImages
from training.model import build_model
from training.report import (
    plot_confusion_matrix,
    plot_hardest,
    plot_history,
    plot_sample_predictions,
)

# Real test digits stored with every version: the serving side checks a freshly loaded model
# against them before it goes live.
GATE_SAMPLES = 64


@dataclass(frozen=True)
class TrainResult:
    version: int
    path: Path
    evaluation: Evaluation
    parameters: int
    seconds: float
    history: dict[str, list[float]]
    model: keras.Model
    calibration: Calibration


@dataclass(frozen=True)
class Rendered:
    """The pictures made for one run, in one pool of processes."""

    training: LabelledImages
    calibration: LabelledImages
    """Held-in foreign digits, not trained on: the temperature is fitted on them."""
    held_out: LabelledImages
    """Held-out foreign digits and not-a-digit pictures, for the figures written at export."""


def render_extras(config: TrainConfig) -> Rendered:
    extra = config.extra or ExtraConfig()
    return Rendered(
        *extra_data.render(
            extra_data.training_jobs(config.extra, config.seed) if config.extra else [],
            extra_data.calibration_jobs(extra, config.seed) if config.extra else [],
            extra_data.held_out_jobs(extra) if config.reports else [],
        )
    )


@dataclass(frozen=True)
class MnistValidation:
    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Datasets:
    train: tf.data.Dataset
    """Every epoch's batches in order, augmented and with the perturbed share, but for the last
    `clean_epochs` epochs, which see MNIST's digits as they are (the extras stay)."""
    steps_per_epoch: int
    validation: tf.data.Dataset | None
    mnist_validation: MnistValidation


def make_datasets(splits: MnistSplits, config: TrainConfig, extras: LabelledImages) -> Datasets:
    """Shuffle once with the seed, hold out the validation tail, perturb a share of the rest, add
    the rendered extras, augment the training part only.

    The last `clean_epochs` epochs see the digits as they are: ending on the distribution that
    real uploads (centred, unperturbed) come from measured better on MNIST, on other people's
    handwriting and on the unsure flag than ending on distorted copies (bench README, Training).
    """
    images, labels = splits.train_images, splits.train_labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    order = np.random.default_rng(config.seed).permutation(len(images))
    images, digits = images[order], labels[order].astype(np.int64)
    n_val = int(len(images) * config.validation_split)
    clean_images, val_images = images[n_val:], images[:n_val]
    train_images = clean_images
    if config.extra is not None and config.extra.perturbed_share:
        train_images = extra_data.perturb_share(
            clean_images, config.extra.perturbed_share, config.seed
        )
    y_train = np.concatenate([extra_data.one_hot(digits[n_val:]), extras.targets])

    def batches(mnist_images: npt.NDArray[np.uint8]) -> tf.data.Dataset:
        x = np.concatenate([mnist_images, extras.images])[..., None].astype(np.float32)
        return (
            tf.data.Dataset.from_tensor_slices((x, y_train))
            .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size)
        )

    unaugmented = batches(train_images)
    train = unaugmented
    if config.augment:
        augmenter = make_augmenter(config.seed)
        train = train.map(
            lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    validation = (
        tf.data.Dataset.from_tensor_slices(
            (val_images[..., None].astype(np.float32), extra_data.one_hot(digits[:n_val]))
        )
        .batch(512)
        .cache()
        if n_val
        else None
    )
    clean_epochs = min(config.clean_epochs, config.epochs)
    epochs = train.repeat(config.epochs - clean_epochs)
    if clean_epochs:
        # Nothing perturbed: the unaugmented batches already are the clean ones (no second copy).
        clean = unaugmented if train_images is clean_images else batches(clean_images)
        epochs = epochs.concatenate(clean.repeat(clean_epochs))
    return Datasets(
        train=epochs.prefetch(tf.data.AUTOTUNE),
        steps_per_epoch=int(train.cardinality().numpy()),
        validation=validation,
        mnist_validation=MnistValidation(val_images, digits[:n_val]),
    )


def mnist_train_count(splits: MnistSplits, config: TrainConfig) -> int:
    """MNIST training images used (validation included)."""
    return len(splits.train_labels) if config.limit is None else config.limit


def make_augmenter(seed: int) -> keras.Sequential:
    """Small shifts, rotations and zooms: the variation real handwriting has and MNIST lacks."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 2),
        ],
        name="augment",
    )


def compile_model(model: keras.Model, config: TrainConfig, steps: int) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10,
        decay_steps=max(1, steps - steps // 10),
        warmup_target=config.learning_rate,
        warmup_steps=steps // 10,
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, use_ema=config.ema, ema_momentum=0.99),
        loss="categorical_crossentropy",  # targets are rows: not-a-digit pictures are uniform
        metrics=["accuracy"],
    )


def predict_logits(
    model: keras.Model,
) -> Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]:
    """Logits in one compiled forward pass per 1,000 images (`model.predict` would add its own
    overhead)."""
    forward = tf.function(lambda x: logits_of(model)(x, training=False), reduce_retracing=True)

    def logits(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        parts = [
            forward(tf.constant(images[i : i + 1000, ..., None], dtype=tf.float32)).numpy()
            for i in range(0, len(images), 1000)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 10), np.float32)

    return logits


def fit(
    model: keras.Model,
    datasets: Datasets,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> dict[str, list[float]]:
    """Compile and train; the history of every metric, one value per epoch."""
    compile_model(model, config, steps=config.epochs * datasets.steps_per_epoch)
    callbacks: list[keras.callbacks.Callback] = []
    if on_epoch is not None:
        # Keras's progress line first, so the hook's output follows the finished epoch's line.
        callbacks.append(keras.callbacks.ProgbarLogger())
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, dict(logs or {}))
            )
        )
    history = model.fit(
        datasets.train,
        validation_data=datasets.validation,
        epochs=config.epochs,
        steps_per_epoch=datasets.steps_per_epoch,
        shuffle=False,  # the dataset reshuffles itself each epoch
        verbose=config.verbose,
        callbacks=callbacks,
    ).history
    return {key: [float(v) for v in values] for key, values in history.items()}


@dataclass(frozen=True)
class Findings:
    """What the trained model is worth, measured on data it never trained on."""

    calibration: Calibration
    evaluation: Evaluation
    """On the official test set, with the calibrated probabilities."""
    calibration_figures: dict[str, Any]
    held_out_digits: npt.NDArray[np.float64]
    """Calibrated probabilities of the held-out foreign digits (empty without reports)."""
    robustness: dict[str, float]


def assess(
    model: keras.Model,
    splits: MnistSplits,
    validation: MnistValidation,
    rendered: Rendered,
    config: TrainConfig,
) -> Findings:
    """Fit the calibration, evaluate on the test set, and (with reports) measure the held-out
    foreign digits, not-a-digit pictures and perturbed test digits."""
    logits = predict_logits(model)
    validation_logits = logits(validation.images)
    calibration_logits = logits(rendered.calibration.images)
    calibration = calibrate(
        validation_logits, validation.labels, calibration_logits, rendered.calibration.labels
    )
    test_logits = logits(splits.test_images)
    probabilities = softmax(test_logits, calibration.temperature).astype(np.float32)
    figures: dict[str, Any] = {
        "mnist_validation": calibration_report(validation_logits, validation.labels, calibration),
        "foreign_held_in": calibration_report(
            calibration_logits, rendered.calibration.labels, calibration
        ),
        "mnist_test": calibration_report(test_logits, splits.test_labels, calibration),
    }
    held_out_digits = np.zeros((0, 10))
    robustness: dict[str, float] = {}
    if config.reports:
        held_out_figures, held_out_digits = generalisation.held_out_report(
            logits, rendered.held_out, calibration
        )
        figures.update(held_out_figures)
        robustness = generalisation.robustness(logits, splits.test_images, splits.test_labels)
    return Findings(
        calibration=calibration,
        evaluation=evaluate_probabilities(probabilities, splits.test_labels),
        calibration_figures=figures,
        held_out_digits=held_out_digits,
        robustness=robustness,
    )


def write_extras(
    directory: Path,
    splits: MnistSplits,
    held_out: LabelledImages,
    history: dict[str, list[float]],
    findings: Findings,
    reports: bool,
) -> None:
    """The gate's samples, and with `reports` the PNGs, beside the SavedModel."""
    gate = slice(0, GATE_SAMPLES)
    np.savez_compressed(
        directory / "samples.npz", images=splits.test_images[gate], labels=splits.test_labels[gate]
    )
    if not reports:
        return
    evaluation = findings.evaluation
    plot_history(history, directory / "training_curves.png")
    plot_confusion_matrix(evaluation, directory / "confusion_matrix.png")
    plot_sample_predictions(
        splits.test_images, splits.test_labels, evaluation, directory / "samples.png"
    )
    is_digit = held_out.targets.max(axis=1) == 1.0
    if is_digit.any():
        plot_hardest(
            held_out.images[is_digit],
            held_out.labels[is_digit],
            findings.held_out_digits,
            findings.calibration.unsure_below,
            directory / "hardest_foreign.png",
        )


def version_metadata(
    config: TrainConfig,
    splits: MnistSplits,
    rendered: Rendered,
    model: keras.Model,
    history: dict[str, list[float]],
    findings: Findings,
    train_seconds: float,
) -> dict[str, Any]:
    """`metadata.json` (export adds the signature, the version and the extra outputs)."""
    evaluation = findings.evaluation
    return {
        "model_name": config.model_name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "test_accuracy": round(evaluation.accuracy, 6),
        "test_loss": round(evaluation.loss, 6),
        "test_images": len(splits.test_labels),
        "train_images": mnist_train_count(splits, config),
        "rendered_train_images": len(rendered.training.targets),
        "per_class": evaluation.per_class(),
        "confusion_matrix": evaluation.confusion.tolist(),
        "parameters": int(model.count_params()),
        "training_config": config.to_json(),
        "training_seconds": round(train_seconds, 2),
        "history": history,
        "calibration": findings.calibration.to_json(findings.calibration_figures),
        "robustness": {
            "digits": min(generalisation.ROBUSTNESS_DIGITS, len(splits.test_labels)),
            "accuracy": findings.robustness,
        }
        if findings.robustness
        else None,
        "dataset_sha256": dict(splits.checksums),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "gate_samples": {
            "file": "samples.npz",
            "count": min(GATE_SAMPLES, len(splits.test_labels)),
        },
    }


def run(
    config: TrainConfig,
    splits: MnistSplits | None = None,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Train, calibrate, evaluate on the official test set, and export one new version.

    `splits` lets tests pass a few hundred images instead of reading the files; `say` hears
    what the run is doing between the epochs.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if splits is None:
        splits = load_mnist(config.data_dir)
    say("rendering the extra training pictures (fonts, drawn styles, not-a-digit)")
    rendered = render_extras(config)
    datasets = make_datasets(splits, config, rendered.training)
    mnist_train = mnist_train_count(splits, config) - len(datasets.mnist_validation.labels)
    say(
        f"training on {mnist_train:,} MNIST digits and {len(rendered.training.targets):,} "
        "rendered pictures"
    )
    model = build_model(config.model)
    history = fit(model, datasets, config, on_epoch)
    train_seconds = time.monotonic() - started

    say("calibrating and evaluating")
    findings = assess(model, splits, datasets.mnist_validation, rendered, config)
    calibration = findings.calibration
    version, path = export_version(
        model,
        Path(config.model_repository) / config.model_name,
        version_metadata(config, splits, rendered, model, history, findings, train_seconds),
        lambda directory: write_extras(
            directory, splits, rendered.held_out, history, findings, config.reports
        ),
        temperature=calibration.temperature,
        unsure_below=calibration.unsure_below,
    )
    return TrainResult(
        version=version,
        path=path,
        evaluation=findings.evaluation,
        parameters=int(model.count_params()),
        seconds=time.monotonic() - started,
        history=history,
        model=model,
        calibration=calibration,
    )
