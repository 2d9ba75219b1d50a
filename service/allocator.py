"""glibc's allocator, set for a process that loads and drops models while it serves.

glibc gives an allocation above its mmap threshold pages of its own, returned to the system when
freed; smaller ones come from its heaps, which keep freed memory for reuse. The threshold starts
at 128 KiB but rises to the size of any such block that is freed (up to 32 MiB). In a server
that drops a model version, the next version's buffers of those sizes then come from the heaps,
where fragmentation from the traffic in between keeps them: a 10-minute soak with a new version
every 30 s grew 586 -> 633 MiB in steps of ~18 MiB at some reloads. With the threshold fixed at
128 KiB the same soak stayed at 583-585 MiB, at no cost in throughput measured (`bench/soak.py`,
README "Soak").
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("service.allocator")

MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own initial value, kept: a 32-image float32 batch (100 KB) stays below it."""
_M_MMAP_THRESHOLD = -3  # from <malloc.h>
_OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix the threshold (which also stops glibc adjusting it); True if it was set here.

    An operator's own `MALLOC_MMAP_THRESHOLD_` is left alone, and so is any C library other than
    glibc (musl's allocator has no such threshold; macOS has no `mallopt`)."""
    if _OPERATOR_SETTING in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("could not fix glibc's mmap threshold; hot reloads may grow memory")
        return False
    return True
