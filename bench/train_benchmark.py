"""Time the default `mnist-train` end to end and report its test accuracy.

Runs the real CLI in a subprocess (TensorFlow import, data loading and verification, training,
evaluation, reports and export all count) into a throwaway model repository, `--runs` times, and
prints one `key=value` line per figure plus the medians.

    python bench/train_benchmark.py --runs 3 --model-repository models   # MNIST_DIR set
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(data_dir: str, repository: Path, extra: list[str]) -> tuple[float, float, int]:
    command = [
        sys.executable, "-m", "training", "--data-dir", data_dir,
        "--model-repository", str(repository), "--quiet", *extra,
    ]  # fmt: skip
    before = set((repository / "mnist").glob("[0-9]*"))
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=sys.stderr)
    wall = time.monotonic() - started
    (version_dir,) = set((repository / "mnist").glob("[0-9]*")) - before
    metadata = json.loads((version_dir / "metadata.json").read_text())
    return wall, float(metadata["test_accuracy"]), int(metadata["parameters"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--model-repository",
        type=Path,
        help="keep the exported versions here (default: a temporary directory)",
    )
    parser.add_argument("extra", nargs="*", help="more mnist-train flags, after --")
    args = parser.parse_args()
    keep = args.model_repository
    repository = keep or Path(tempfile.mkdtemp(prefix="train-bench-"))
    walls, accuracies = [], []
    for run in range(1, args.runs + 1):
        wall, accuracy, parameters = one_run(args.data_dir, repository, args.extra)
        walls.append(wall)
        accuracies.append(accuracy)
        print(
            f"run={run} wall_seconds={wall:.1f} test_accuracy={accuracy:.4f} "
            f"parameters={parameters}",
            flush=True,
        )
    print(f"median_wall_seconds={statistics.median(walls):.1f}")
    print(f"median_test_accuracy={statistics.median(accuracies):.4f}")
    print(f"min_test_accuracy={min(accuracies):.4f}")
    print(f"cpu_count={os.cpu_count()}")
    if keep is None:
        shutil.rmtree(repository, ignore_errors=True)


if __name__ == "__main__":
    main()
