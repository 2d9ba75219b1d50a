"""The allocator returns a dropped model's large buffers to the system (service/allocator.py).

In a fresh process each: glibc's threshold moves with what the process has freed before."""

from __future__ import annotations

import os
import subprocess
import sys

PROGRAM = """
import sys
import numpy as np
from service.allocator import fix_mmap_threshold, suit_tensorflow

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

print(fix_mmap_threshold())
if sys.argv[1:] == ["tensorflow"]:
    suit_tensorflow()
before = rss_mib()
np.ones(4 << 20, np.uint8)  # freed at once: unfixed, glibc raises its threshold past 4 MiB
buffer = np.ones(4 << 20, np.uint8)  # a buffer of the next version, filled
del buffer
print(rss_mib() - before)
"""


def run(env: dict[str, str], *args: str) -> tuple[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, *args], env=env, capture_output=True, text=True, check=True
    )
    fixed, growth = result.stdout.split()
    return fixed, float(growth)


def test_a_freed_large_buffer_goes_back_to_the_system() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    fixed, growth = run(env)
    assert fixed == "True"
    assert growth < 1, f"a freed 4 MiB buffer left {growth:.1f} MiB behind"


def test_a_savedmodel_gets_its_large_buffers_from_the_heap_again() -> None:
    """TensorFlow allocates its tensors on every call: mapping each one cost 25% at batch 32."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    fixed, growth = run(env, "tensorflow")
    assert fixed == "True"
    assert growth > 3, f"a freed 4 MiB buffer went back to the system ({growth:.1f} MiB kept)"


def test_an_operators_own_threshold_is_kept() -> None:
    fixed, _ = run({**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert fixed == "False"
