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

from training.config import TrainConfig
from training.data import MnistSplits, load_mnist
from training.evaluate import Evaluation, evaluate_probabilities
from training.export import export_version
from training.model import build_model
from training.report import plot_confusion_matrix, plot_history, plot_sample_predictions

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


def make_datasets(
    splits: MnistSplits, config: TrainConfig
) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """Shuffle once with the seed, hold out the validation tail, augment the training part only."""
    images, labels = splits.train_images, splits.train_labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    order = np.random.default_rng(config.seed).permutation(len(images))
    images, labels = images[order], labels[order]
    n_val = int(len(images) * config.validation_split)
    x = images[..., None].astype(np.float32)
    x_train, y_train, x_val, y_val = x[n_val:], labels[n_val:], x[:n_val], labels[:n_val]

    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
    )
    if config.augment:
        augmenter = make_augmenter(config.seed)
        train = train.map(
            lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    train = train.prefetch(tf.data.AUTOTUNE)
    validation = (
        tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(512).cache() if n_val else None
    )
    return train, validation


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
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def predict_in_batches(
    model: keras.Model, images: npt.NDArray[np.uint8]
) -> npt.NDArray[np.float32]:
    """One compiled forward pass per 1,000 images: `model.predict` would add its own overhead."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    parts = [
        forward(tf.constant(images[i : i + 1000, ..., None], dtype=tf.float32)).numpy()
        for i in range(0, len(images), 1000)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 10), np.float32)


def run(
    config: TrainConfig,
    splits: MnistSplits | None = None,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train, evaluate on the official test set, and export one new version.

    `splits` lets tests pass a few hundred images instead of reading the files.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if splits is None:
        splits = load_mnist(config.data_dir)
    train, validation = make_datasets(splits, config)
    model = build_model(config.model)
    compile_model(model, config, steps=config.epochs * int(train.cardinality().numpy()))
    callbacks: list[keras.callbacks.Callback] = []
    if on_epoch is not None:
        # Keras's progress line first, so the hook's output follows the finished epoch's line.
        callbacks.append(keras.callbacks.ProgbarLogger())
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, dict(logs or {}))
            )
        )
    fit = model.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        shuffle=False,  # the dataset reshuffles itself each epoch
        verbose=config.verbose,
        callbacks=callbacks,
    )
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    train_seconds = time.monotonic() - started

    probabilities = predict_in_batches(model, splits.test_images)
    evaluation = evaluate_probabilities(probabilities, splits.test_labels)

    def write_extras(directory: Path) -> None:
        gate = slice(0, GATE_SAMPLES)
        np.savez_compressed(
            directory / "samples.npz",
            images=splits.test_images[gate],
            labels=splits.test_labels[gate],
        )
        if config.reports:
            plot_history(history, directory / "training_curves.png")
            plot_confusion_matrix(evaluation, directory / "confusion_matrix.png")
            plot_sample_predictions(
                splits.test_images, splits.test_labels, evaluation, directory / "samples.png"
            )

    metadata: dict[str, Any] = {
        "model_name": config.model_name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "test_accuracy": round(evaluation.accuracy, 6),
        "test_loss": round(evaluation.loss, 6),
        "test_images": len(splits.test_labels),
        "train_images": len(splits.train_labels) if config.limit is None else config.limit,
        "per_class": evaluation.per_class(),
        "confusion_matrix": evaluation.confusion.tolist(),
        "parameters": int(model.count_params()),
        "training_config": config.to_json(),
        "training_seconds": round(train_seconds, 2),
        "history": history,
        "dataset_sha256": dict(splits.checksums),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "gate_samples": {
            "file": "samples.npz",
            "count": min(GATE_SAMPLES, len(splits.test_labels)),
        },
    }
    version, path = export_version(
        model, Path(config.model_repository) / config.model_name, metadata, write_extras
    )
    return TrainResult(
        version=version,
        path=path,
        evaluation=evaluation,
        parameters=int(model.count_params()),
        seconds=time.monotonic() - started,
        history=history,
        model=model,
    )
