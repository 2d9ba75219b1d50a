"""The API fuzzing of tests/service/test_fuzz.py and tests/grpc_api/test_grpc_fuzz.py, for many
more examples than CI runs.

Every operation of the OpenAPI schema (schemathesis), every gRPC method, and the hand-written
body and message strategies (hypothesis) get `--examples` each, with random seeds unless
`--seed` is given, against live servers with a tiny model trained on 1,500 digits. Prints the
examples run and the failures (any 5xx or gRPC UNKNOWN/INTERNAL, a missing request id, an error
that is not JSON); exits non-zero on a failure.

    python bench/fuzz.py --examples 800      # ~24,000 examples, a few minutes
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=800, help="examples per operation")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples), "FUZZ_RANDOM": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        "-o",
        "addopts=",
        str(ROOT / "tests" / "service" / "test_fuzz.py"),
        str(ROOT / "tests" / "grpc_api" / "test_grpc_fuzz.py"),
    ]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    counts = re.findall(r"(\d+) passing, (\d+) failing", output)
    examples = sum(int(passing) for passing, _ in counts)
    failing = sum(int(failed) for _, failed in counts)
    tests = re.search(r"(\d+) passed", output)
    print(
        f"# {time.strftime('%Y-%m-%d')} fuzz examples_per_operation={args.examples} "
        f"seed={'random' if args.seed is None else args.seed}"
    )
    print(
        f"fuzz tests_passed={tests.group(1) if tests else 0} examples={examples + failing} "
        f"failing_examples={failing} exit={result.returncode} "
        f"seconds={time.monotonic() - started:.0f}"
    )
    if result.returncode != 0:
        print(output[-6000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
