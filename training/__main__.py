"""`mnist-train`: train the CNN on MNIST and export a new version into the model repository."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from training.config import ModelConfig, TrainConfig
from training.data import MNIST_TRAIN_IMAGES, MnistDataError, ProgressSink, load_mnist
from training.export import existing_versions
from training.extra_data import ExtraConfig


def parse_args(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    defaults, model_defaults = TrainConfig(), ModelConfig()
    parser = argparse.ArgumentParser(
        prog="mnist-train",
        description="Train a CNN on MNIST and export it as a new SavedModel version.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data and output")
    data.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("MNIST_DIR") or None,
        help="directory with the four MNIST IDX files (.gz or not); default $MNIST_DIR, "
        "else ~/.cache/mnist-serving/mnist, downloading what is missing",
    )
    data.add_argument("--model-repository", type=Path, default=defaults.model_repository)
    data.add_argument("--model-name", default=defaults.model_name)
    data.add_argument(
        "--limit",
        type=int,
        default=None,
        help="train on the first N training images only (the rendered extras shrink in "
        "proportion, so the mix stays the full run's)",
    )
    data.add_argument("--validation-split", type=float, default=defaults.validation_split)
    data.add_argument("--no-reports", action="store_true", help="skip the PNG reports")
    data.add_argument(
        "--if-no-model",
        action="store_true",
        help="do nothing when the repository already holds a version of the model "
        "(for init containers and one-shot jobs)",
    )

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=defaults.epochs)
    fit.add_argument("--batch-size", type=int, default=defaults.batch_size)
    fit.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    fit.add_argument("--seed", type=int, default=defaults.seed)
    fit.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=defaults.augment,
        help="random rotation, zoom and shift of training images",
    )
    fit.add_argument(
        "--extra-data",
        action=argparse.BooleanOptionalAction,
        default=defaults.extra is not None,
        help="also train on perturbed copies of MNIST digits, digits rendered from handwriting "
        "fonts and drawn styles, and not-a-digit pictures (see training/extra_data.py)",
    )
    fit.add_argument(
        "--clean-epochs",
        type=int,
        default=defaults.clean_epochs,
        help="train the last N epochs (all of them, if fewer) on MNIST's digits as they are: "
        "no augmentation, none perturbed",
    )
    fit.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=defaults.ema,
        help="export an exponential moving average of the weights",
    )
    fit.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")

    arch = parser.add_argument_group("model")
    arch.add_argument("--blocks", type=int, default=model_defaults.blocks)
    arch.add_argument("--filters", type=int, default=model_defaults.filters)
    arch.add_argument("--dense-units", type=int, default=model_defaults.dense_units)
    arch.add_argument("--dropout", type=float, default=model_defaults.dropout)
    arch.add_argument("--dense-dropout", type=float, default=model_defaults.dense_dropout)
    arch.add_argument(
        "--batch-norm", action=argparse.BooleanOptionalAction, default=model_defaults.batch_norm
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be a positive number of images")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.clean_epochs < 0:
        parser.error("--clean-epochs must be 0 or more")
    config = TrainConfig(
        data_dir=args.data_dir,
        model_repository=args.model_repository,
        model_name=args.model_name,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        validation_split=args.validation_split,
        augment=args.augment,
        extra=_extras(defaults.extra, args.limit) if args.extra_data else None,
        clean_epochs=args.clean_epochs,
        ema=args.ema,
        limit=args.limit,
        reports=not args.no_reports,
        verbose=2 if args.quiet or not sys.stdout.isatty() else 1,
        model=ModelConfig(
            blocks=args.blocks,
            filters=args.filters,
            dense_units=args.dense_units,
            dropout=args.dropout,
            dense_dropout=args.dense_dropout,
            batch_norm=args.batch_norm,
        ),
    )
    return config, args.if_no_model


class _TqdmSink(ProgressSink):
    def __init__(self, url: str, total: int | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1])

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def _extras(defaults: ExtraConfig | None, limit: int | None) -> ExtraConfig:
    extra = defaults or ExtraConfig()
    return extra if limit is None else extra.shrunk(min(1.0, limit / MNIST_TRAIN_IMAGES))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _epoch_reporter(epochs: int) -> Callable[[int, dict[str, float]], None]:
    """One line per epoch with the time left, estimated from the epochs so far."""
    started = time.monotonic()

    def report(epoch: int, logs: dict[str, float]) -> None:
        elapsed = time.monotonic() - started
        left = elapsed / epoch * (epochs - epoch)
        accuracy = logs.get("val_accuracy")
        shown = f"validation accuracy {accuracy:.2%}; " if accuracy is not None else ""
        print(
            f"  epoch {epoch}/{epochs} done: {shown}{_duration(elapsed)} so far, "
            f"about {_duration(left)} left",
            flush=True,
        )

    return report


def main(argv: Sequence[str] | None = None) -> int:
    config, if_no_model = parse_args(argv)
    model_dir = Path(config.model_repository) / config.model_name
    if if_no_model and existing_versions(model_dir):
        print(f"{model_dir} already holds versions {existing_versions(model_dir)}; not training")
        return 0
    try:
        splits = load_mnist(config.data_dir, progress=_TqdmSink)
    except MnistDataError as exc:
        print(f"mnist-train: {exc}", file=sys.stderr)
        return 2
    print(
        f"MNIST from {splits.source}: {len(splits.train_labels)} training and "
        f"{len(splits.test_labels)} test images (checksums verified)",
        flush=True,
    )
    # Imported late: TensorFlow takes seconds to import, argument errors should not wait for it.
    from training.export import ExportFailed
    from training.train import run

    images = len(splits.train_labels) if config.limit is None else config.limit
    print(
        f"Training for {config.epochs} epochs on {images:,} images (with the defaults 6 to 25 "
        "minutes on 2 CPU cores, as machines differ; the time left is printed after each epoch)",
        flush=True,
    )
    try:
        result = run(
            config,
            splits,
            on_epoch=_epoch_reporter(config.epochs),
            say=lambda what: print(f"{what[0].upper()}{what[1:]} ...", flush=True),
        )
    except ExportFailed as exc:
        print(f"mnist-train: {exc}", file=sys.stderr)
        return 1
    evaluation = result.evaluation
    print(
        "\n".join(
            [
                "",
                f"Exported {config.model_name} version {result.version} to {result.path}",
                f"  test accuracy  {evaluation.accuracy:.4%} on {len(splits.test_labels)} images",
                f"  test loss      {evaluation.loss:.4f}",
                f"  calibration    temperature {result.calibration.temperature:.3f}; answers "
                f"below {result.calibration.unsure_below:.1%} confidence are flagged unsure",
                f"  parameters     {result.parameters:,}",
                f"  wall time      {result.seconds:.1f} s",
            ]
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
