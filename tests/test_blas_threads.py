"""NumPy's BLAS runs on one thread in the server and in training's rendering processes: a BLAS
thread pool made the upload preprocessing up to 8 times slower beside a busy model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COUNT_THREADS = "import numpy, os; print(len(os.listdir('/proc/self/task')))"


def threads_after(first_import: str) -> int:
    environment = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    code = f"import {first_import}; {COUNT_THREADS}" if first_import else COUNT_THREADS
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True
    )
    return int(result.stdout)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("package", ["service", "training"])
def test_numpy_starts_no_blas_threads_after_the_package(package: str) -> None:
    assert threads_after(package) == 1
    if (os.cpu_count() or 1) > 1:
        assert threads_after("") > 1  # without it, OpenBLAS starts its pool: the test can fail
