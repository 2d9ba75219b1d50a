"""`mnist-predict PATH...`: classify image files, folders and globs.

In-process from a model repository (no server: the upload endpoint's preprocessing and the
SavedModel, loaded here), or against a running server with `--url` (through `Client`, with its
retries). Output: a table, `--json` or `--csv`. Exit status 1 if any file could not be read or
classified, 2 if nothing matched.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from mnist_client.client import Client, Prediction, ServerError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
)
BATCH = 16  # images per model call or request (the server takes at most 64 by default)
IMAGE_ERRORS = frozenset({400, 413, 415, 422})  # statuses that one image can cause


@dataclass(frozen=True)
class Outcome:
    path: str
    prediction: Prediction | None = None
    error: str | None = None


# --- which files -----------------------------------------------------------------------------


def expand(arguments: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named, image files under folders (sorted), and glob matches; and what matched
    nothing. A glob is expanded here too, for shells (and Windows) that pass it on unexpanded."""
    found: list[Path] = []
    unmatched: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.exists():
            found.append(path)
        elif glob.has_magic(argument):
            matches = sorted(Path(m) for m in glob.glob(argument, recursive=True))
            files = [m for m in matches if m.is_file()]
            found += files
            if not files:
                unmatched.append(argument)
        else:
            unmatched.append(argument)
    return list(dict.fromkeys(found)), unmatched


def batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


# --- how they are classified -----------------------------------------------------------------

Classify = Callable[[list[tuple[str, bytes]]], list[Prediction | str]]
"""(name, bytes) pairs in, a prediction or an error message per file out."""


def local_classifier(repository: Path, name: str, version: int | None) -> Classify:
    """The SavedModel from the repository, with the server's own upload preprocessing."""
    import numpy as np

    from service.errors import ServingError
    from service.images import prepare_upload
    from service.repository import ModelRepository
    from service.runtime import load_model
    from service.settings import Settings

    models = ModelRepository(repository, name)
    versions = models.versions()
    if not versions:
        raise SystemExit(f"mnist-predict: no model versions in {models.model_dir}")
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        raise SystemExit(f"mnist-predict: {models.model_dir} has no version {chosen}: {versions}")
    model = load_model(name, chosen, models.path(chosen))
    max_pixels = Settings.model_fields["max_image_pixels"].default

    def classify(files: list[tuple[str, bytes]]) -> list[Prediction | str]:
        results: list[Prediction | str] = []
        prepared: list[tuple[int, Any]] = []
        for index, (file_name, data) in enumerate(files):
            try:
                prepared.append((index, prepare_upload(data, max_pixels, file_name).pixels))
                results.append("")
            except ServingError as exc:
                results.append(str(exc))
        if prepared:
            images = np.stack([pixels for _, pixels in prepared])[..., None].astype(np.float32)
            for (index, _), row in zip(prepared, model.predict(images).tolist(), strict=True):
                digit = int(np.argmax(row))
                unsure = row[digit] < model.unsure_below
                results[index] = Prediction(digit, row[digit], row, str(chosen), unsure=unsure)
        return results

    return classify


def remote_classifier(client: Client, version: int | None, label: str | None) -> Classify:
    def classify(files: list[tuple[str, bytes]]) -> list[Prediction | str]:
        try:
            return list(client.predict_files(files, version=version, label=label))
        except ServerError as exc:
            if exc.status in IMAGE_ERRORS and len(files) > 1:
                # One bad image fails its whole request: ask again one by one to say which.
                return [item for file in files for item in classify([file])]
            if exc.status == 504 and len(files) > 1:
                # Large photos can take the server past its budget in groups of this size.
                half = len(files) // 2
                return classify(files[:half]) + classify(files[half:])
            return [f"{exc.status} {exc.message}"] * len(files)
        except httpx.HTTPError as exc:
            return [f"no answer from {client.url}: {exc or type(exc).__name__}"] * len(files)

    return classify


def run(paths: list[Path], classify: Classify, progress: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="image", file=sys.stderr)
    for group in batches(paths, BATCH):
        readable: list[tuple[Path, bytes]] = []
        for path in group:
            try:
                readable.append((path, path.read_bytes()))
            except OSError as exc:
                outcomes.append(Outcome(str(path), error=exc.strerror or str(exc)))
        answers = classify([(p.name, data) for p, data in readable]) if readable else []
        for (path, _), answer in zip(readable, answers, strict=True):
            if isinstance(answer, Prediction):
                outcomes.append(Outcome(str(path), prediction=answer))
            else:
                outcomes.append(Outcome(str(path), error=answer))
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(outcomes, key=lambda o: order[o.path])


# --- what is printed -------------------------------------------------------------------------


def write_table(outcomes: list[Outcome], out: TextIO) -> None:
    width = max([len("file"), *(len(o.path) for o in outcomes)])
    out.write(f"{'file':<{width}}  digit  probability\n")
    for o in outcomes:
        if o.prediction is not None:
            p = o.prediction
            flag = "  unsure" if p.unsure else ""
            out.write(f"{o.path:<{width}}  {p.digit:>5}  {p.probability:>11.4f}{flag}\n")
        else:
            out.write(f"{o.path:<{width}}  error: {o.error}\n")


def write_json(outcomes: list[Outcome], out: TextIO) -> None:
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        if o.prediction is not None:
            p = o.prediction
            rows.append(
                {
                    "file": o.path,
                    "digit": p.digit,
                    "probability": p.probability,
                    "unsure": p.unsure,
                    "probabilities": p.probabilities,
                    "model_version": p.model_version,
                }
            )
        else:
            rows.append({"file": o.path, "error": o.error})
    json.dump(rows, out, indent=1)
    out.write("\n")


def write_csv(outcomes: list[Outcome], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    header = ["file", "digit", "probability", "unsure", *(f"p{d}" for d in range(10)), "error"]
    writer.writerow(header)
    for o in outcomes:
        if o.prediction is not None:
            p = o.prediction
            shares = (f"{v:.6f}" for v in p.probabilities)
            writer.writerow([o.path, p.digit, f"{p.probability:.6f}", p.unsure, *shares, ""])
        else:
            writer.writerow([o.path, "", "", "", *[""] * 10, o.error])


# --- the command -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-predict",
        description="Classify images of handwritten digits: files, folders or globs. Without "
        "--url the model is loaded from the repository in this process (no server needed).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, globs")
    where = parser.add_argument_group("where the model is")
    where.add_argument("--url", help="a running mnist-serve, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--api-key",
        default=os.environ.get("MNIST_API_KEY"),
        help="with --url, when the server needs one (env MNIST_API_KEY)",
    )
    where.add_argument(
        "--model-repository",
        type=Path,
        default=Path(os.environ.get("MNIST_MODEL_REPOSITORY", "models")),
        help="without --url (env MNIST_MODEL_REPOSITORY; default: models)",
    )
    where.add_argument(
        "--model-name", default=os.environ.get("MNIST_MODEL_NAME", "mnist"), help="default: mnist"
    )
    where.add_argument("--model-version", type=int, help="default: the newest")
    where.add_argument("--label", help="with --url: the version a label points at")
    where.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    where.add_argument("--retries", type=int, default=3, help="retries of refused requests")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="a JSON list, one object per file")
    output.add_argument("--csv", action="store_true", help="CSV with the ten probabilities")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (shown for many files)"
    )
    args = parser.parse_args(argv)
    if args.label and not args.url:
        parser.error("--label needs --url (labels live in a server)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths, unmatched = expand(args.paths)
    for argument in unmatched:
        print(f"mnist-predict: {argument}: no such file, folder or match", file=sys.stderr)
    if not paths:
        print("mnist-predict: no image files to classify", file=sys.stderr)
        return 2
    progress = not args.no_progress and len(paths) > BATCH and sys.stderr.isatty()
    if args.url:
        with Client(
            args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries
        ) as client:
            outcomes = run(
                paths, remote_classifier(client, args.model_version, args.label), progress
            )
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        classify = local_classifier(args.model_repository, args.model_name, args.model_version)
        outcomes = run(paths, classify, progress)
    writer = write_json if args.json else write_csv if args.csv else write_table
    writer(outcomes, sys.stdout)
    failed = sum(o.error is not None for o in outcomes)
    if failed:
        print(f"mnist-predict: {failed} of {len(outcomes)} files failed", file=sys.stderr)
    return 1 if failed or unmatched else 0


if __name__ == "__main__":
    raise SystemExit(main())
