"""What the worker processes of one server know of each other, through a shared directory.

With `--workers N` the kernel hands each connection to whichever worker accepts it, so a probe
answered by one worker says nothing about the others. Each worker keeps a marker file
`ready-<pid>` in the metrics directory while it can answer, and the server is ready only when N
live workers have one: a worker still loading (or restarted after a crash) makes `/readyz` 503
on every worker, instead of one worker saying "ready" while its sibling refuses requests.

The same directory holds prometheus_client's per-process files; a worker that died leaves its
live gauges there (queue depth, requests in flight), which would be summed into the scrape for
ever. `reap()` removes what dead workers left, as gunicorn's `child_exit` hook does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from prometheus_client import multiprocess

log = logging.getLogger("service.workers")

_MARKER_PREFIX = "ready-"
# What a worker leaves behind that must go when it dies: its marker and its live gauges.
_LEFT_BEHIND = re.compile(r"^(?:ready-|gauge_live\w*_)(\d+)(?:\.db)?$")


def process_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped by its parent) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class WorkerRegistry:
    def __init__(self, directory: Path | None, expected_workers: int) -> None:
        """`directory` None: a single process, which knows everything about itself."""
        self.directory = directory
        self.expected_workers = expected_workers
        self.pid = os.getpid()
        self._ready = False

    @property
    def _marker(self) -> Path:
        assert self.directory is not None
        return self.directory / f"{_MARKER_PREFIX}{self.pid}"

    def set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if self.directory is None:
            return
        try:
            if ready:
                self._marker.touch()
            else:
                self._marker.unlink(missing_ok=True)
        except OSError as exc:  # the server stays up; readiness just cannot be shared
            log.error("cannot update the readiness marker %s: %s", self._marker, exc)

    def all_ready(self) -> bool:
        """This worker is ready, and so are as many live workers as the server runs."""
        if not self._ready:
            return False
        if self.directory is None or self.expected_workers <= 1:
            return True
        ready = [pid for pid in self._pids(markers_only=True) if process_alive(pid)]
        return len(ready) >= self.expected_workers

    def reap(self) -> list[int]:
        """Forget the workers that died: their live gauges and markers. Returns their pids."""
        if self.directory is None:
            return []
        dead = sorted(pid for pid in self._pids() if pid != self.pid and not process_alive(pid))
        for pid in dead:
            multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
            # Its counters and histograms stay: what a dead worker counted was still counted.
            with contextlib.suppress(OSError):
                (self.directory / f"{_MARKER_PREFIX}{pid}").unlink(missing_ok=True)
        return dead

    def _pids(self, markers_only: bool = False) -> set[int]:
        assert self.directory is not None
        try:
            names = [entry.name for entry in os.scandir(self.directory)]
        except OSError:
            return set()
        found = (_LEFT_BEHIND.match(name) for name in names)
        return {
            int(match.group(1))
            for match in found
            if match and (not markers_only or match.group(0).startswith(_MARKER_PREFIX))
        }
