"""glibc's allocator, set for a process that loads and drops models while it serves.

glibc gives an allocation above its mmap threshold pages of its own, returned to the system when
freed; smaller ones come from its heaps, which keep freed memory for reuse. The threshold starts
at 128 KiB but rises to the size of any such block that is freed (up to 32 MiB). In a server
that drops a model version, the next version's buffers of those sizes then come from the heaps,
where fragmentation from the traffic in between keeps them: a 10-minute soak with a new version
every 30 s grew 586 -> 633 MiB in steps of ~18 MiB at some reloads. With the threshold fixed at
128 KiB the same soak stayed at 583-585 MiB, at no cost in throughput measured (`bench/soak.py`,
README "Soak").

That suits TensorFlow Lite, which allocates its buffers once per batch size. TensorFlow itself
allocates every tensor on every call: with the threshold fixed, each of them is mapped and
unmapped, and a SavedModel ran 25% slower at batch 32 (1,305 against 1,748 images/s in-process).
So the threshold is fixed only when the runtime is not `savedmodel`, and given back to the heap
as far as glibc allows if a SavedModel is loaded anyway (`auto`'s fallback).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from collections.abc import Callable

log = logging.getLogger("service.allocator")

MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own initial value, kept: a 32-image float32 batch (100 KB) stays below it."""
TENSORFLOW_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Where glibc's own adjustment ends on 64-bit systems (its trim threshold then goes to twice
that): a fixed threshold cannot be made dynamic again."""
_M_TRIM_THRESHOLD = -1  # from <malloc.h>
_M_MMAP_THRESHOLD = -3
_OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"
_fixed = False


def fix_mmap_threshold() -> bool:
    """Fix the threshold (which also stops glibc adjusting it); True if it was set here.

    An operator's own `MALLOC_MMAP_THRESHOLD_` is left alone, and so is any C library other than
    glibc (musl's allocator has no such threshold; macOS has no `mallopt`)."""
    global _fixed
    _fixed = _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return _fixed


def suit_tensorflow() -> None:
    """Large buffers from the heap again, for a SavedModel in a process where the threshold was
    fixed: 1,562 images/s at batch 32 in-process, against 1,305 fixed and 1,693 never fixed."""
    if _fixed:
        _mallopt(_M_MMAP_THRESHOLD, TENSORFLOW_MMAP_THRESHOLD_BYTES)
        _mallopt(_M_TRIM_THRESHOLD, 2 * TENSORFLOW_MMAP_THRESHOLD_BYTES)


def _mallopt(parameter: int, value: int) -> bool:
    mallopt = _glibc_mallopt()
    if mallopt is None or _OPERATOR_SETTING in os.environ:
        return False
    if mallopt(parameter, value) != 1:
        log.warning("glibc's mallopt(%d, %d) failed; hot reloads may grow memory", parameter, value)
        return False
    return True


@functools.cache
def _glibc_mallopt() -> Callable[[int, int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    mallopt: Callable[[int, int], int] | None = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt
