"""Which runtime and TensorFlow settings run this model fastest, called in-process as the server
calls it: images/s at each batch size, every variant side by side, A B A B, median of rounds.

    python bench/runtime_ceiling.py --model-repository models
    python bench/runtime_ceiling.py --model-repository models --variants tflite --versions 1,2

Variants: the SavedModel (TensorFlow's defaults; oneDNN off; one thread per pool) and the
TensorFlow Lite conversion (service/tflite.py; its default threads; one thread). Pinned to one
core (`--core`), as the serving benchmarks pin the server. With `--versions`, each variant runs
for each version in turn (two models compared in one run). The allocator variants
(`ALLOCATOR_VARIANTS`) run only when named in `--variants`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.harness import arguments, ensure_model, in_process_ceiling  # noqa: E402

VARIANTS: dict[str, tuple[str, int, dict[str, str]]] = {
    "savedmodel": ("savedmodel", 0, {}),
    "savedmodel-onednn-off": ("savedmodel", 0, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    "savedmodel-1-thread": ("savedmodel", 1, {}),
    "tflite": ("tflite", 0, {}),
    "tflite-1-thread": ("tflite", 1, {}),
}
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc's mmap threshold as the server fixes it for TensorFlow Lite (`service.allocator`)."""
ALLOCATOR_VARIANTS: dict[str, tuple[str, int, dict[str, str]]] = {
    "tflite-mmap-fixed": ("tflite", 0, FIXED_MMAP),
    "savedmodel-mmap-fixed": ("savedmodel", 0, FIXED_MMAP),
    "savedmodel-mmap-32mib": (
        "savedmodel",
        0,
        {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)},
    ),
}
"""Not run unless named: the allocator settings of README "Soak" (`suit_tensorflow`'s is the
last), each against the variant without it."""


def agreement(repository: Path, data_dir: str | None) -> None:
    """The TensorFlow Lite runtime against the SavedModel on the full MNIST test set."""
    import numpy as np

    from service.runtime import load_model
    from training.data import load_mnist

    model_dir = repository / "mnist"
    newest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    model = load_model("mnist", newest, model_dir / str(newest), "tflite")
    savedmodel = load_model("mnist", newest, model_dir / str(newest), "savedmodel")
    splits = load_mnist(data_dir)
    images = splits.test_images[..., None].astype(np.float32)
    served = np.concatenate(
        [model.predict(images[i : i + 500]) for i in range(0, len(images), 500)]
    )
    reference = np.concatenate(
        [savedmodel.predict(images[i : i + 500]) for i in range(0, len(images), 500)]
    )
    digits, expected = served.argmax(axis=1), reference.argmax(axis=1)
    print(
        f"agreement images={len(images)} different_digits={int((digits != expected).sum())} "
        f"max_probability_difference={float(np.abs(served - reference).max()):.2g} "
        f"accuracy_tflite={float((digits == splits.test_labels).mean()):.4f} "
        f"accuracy_savedmodel={float((expected == splits.test_labels).mean()):.4f}",
        flush=True,
    )


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--core", default="1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--versions", default="", help="comma-separated (default: newest)")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    batches = [int(b) for b in args.batches.split(",")]
    versions = [int(v) for v in args.versions.split(",") if v.strip()] or [0]
    names = [
        f"{variant}@v{version}" if version else variant
        for variant in args.variants.split(",")
        for version in versions
    ]
    print(
        f"# {time.strftime('%Y-%m-%d')} in-process images/s, core {args.core}, "
        f"median of {args.rounds} rounds (A B A B)",
        flush=True,
    )
    results: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        for batch in batches:
            for name in names:
                variant, _, version = name.partition("@v")
                runtime, threads, env = {**VARIANTS, **ALLOCATOR_VARIANTS}[variant]
                rate = in_process_ceiling(
                    args.model_repository,
                    args.core,
                    batch,
                    args.seconds,
                    runtime,
                    threads,
                    env,
                    int(version or 0),
                )
                results.setdefault((name, batch), []).append(rate)
                print(
                    f"round={round_ + 1} variant={name} batch={batch} images_per_s={rate:.0f}",
                    flush=True,
                )
    agreement(args.model_repository, args.data_dir)
    base = {batch: statistics.median(results[(names[0], batch)]) for batch in batches}
    print("variant " + " ".join(f"batch{b}" for b in batches))
    for name in names:
        cells = []
        for batch in batches:
            median = statistics.median(results[(name, batch)])
            cells.append(f"{median:.0f}({median / base[batch]:.2f}x)")
        print(f"{name} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
