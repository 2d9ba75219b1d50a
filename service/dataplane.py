"""The protocol-independent core every API calls: which versions are served, and `infer`.

It owns the models' lifetime. A watcher polls the repository: new versions are loaded, warmed and
checked in a worker thread while the current ones keep answering, then published by swapping one
dict (so a request sees either the old set or the new, never half). Requests already queued on a
version's batcher finish there; a version that leaves is unloaded only after its batcher drained.
A version that fails to load is recorded, counted and skipped; what was serving goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.batcher import DynamicBatcher
from service.cost import CostModel
from service.errors import InvalidInput, ModelNotFound, ModelNotReady, VersionUnloading
from service.gate import check_correctness, check_runtime_agrees
from service.metrics import BatcherMetrics, Metrics
from service.params import shown
from service.repository import ModelRepository, RepositoryUnavailable
from service.runtime import (
    LoadedModel,
    ModelLoadError,
    configure_tensorflow,
    deprioritise_compute_threads,
    fall_back_to_savedmodel,
    load_model,
    lower_thread_priority,
    warm_up,
)
from service.settings import Settings
from service.statistics import VersionStatistics
from service.tracing import Tracing
from service.workers import WorkerRegistry

log = logging.getLogger("service.dataplane")


class ModelState(enum.StrEnum):
    """Named as TensorFlow Serving's `ModelVersionStatus.State` so its status route maps 1:1."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class VersionStatus:
    version: int
    state: ModelState
    error: str = ""


@dataclass(eq=False)
class ServedVersion:
    model: LoadedModel
    batcher: DynamicBatcher
    in_flight: Any
    """This version's in-flight gauge, looked up once rather than on every request."""
    statistics: VersionStatistics

    @property
    def version(self) -> int:
        return self.model.version


@dataclass(frozen=True)
class Inference:
    probabilities: npt.NDArray[np.float32]
    model_name: str
    version: int
    unsure_below: float
    """Answers less confident than this are flagged unsure."""
    signature_outputs: tuple[str, ...]
    """What the version's serving signature returns (TensorFlow Serving's APIs answer these)."""

    @property
    def unsure(self) -> npt.NDArray[np.bool_]:
        flags: npt.NDArray[np.bool_] = self.probabilities.max(axis=1) < self.unsure_below
        return flags


def refreeze_heap(runtimes: set[str]) -> None:
    """Keep TensorFlow's and the models' objects out of the garbage collector's view, after a
    change of versions on `runtimes`.

    TensorFlow leaves millions of long-lived objects; every full collection walked them all and
    stalled the event loop for ~80 ms (measured: p99 of /healthz 88 ms at 64 connections, p90 7 ms).
    Frozen objects are never collected, so they are first unfrozen: an unloaded version's objects
    are then freed by this collection (freezing on every load and never unfreezing kept each
    unloaded version in memory: +6.3 MiB of RSS per reload). That full collection stalls the
    event loop too (~0.18 s with TensorFlow's ~320,000 objects, on a slow day), so it runs only
    when it is needed: once, for TensorFlow's own objects, and for every change that loads or
    drops a SavedModel. A TensorFlow Lite version leaves a few hundred objects, which the
    collector's usual passes free once it is dropped.
    """
    if gc.get_freeze_count() and "savedmodel" not in runtimes:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _fingerprint(path: Path) -> tuple[tuple[str, int], ...]:
    """Changes when files in a version directory are replaced, so a fixed version is retried."""
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir()))
    except OSError:
        return ()


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        workers: WorkerRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.workers = workers or WorkerRegistry(None, 1)
        self.repository = ModelRepository(settings.model_repository, settings.model_name)
        self.served: dict[int, ServedVersion] = {}
        self.status: dict[int, VersionStatus] = {}
        self.labels: dict[str, int] = dict(settings.model_labels)
        self.draining = False
        """Set on SIGTERM: readiness turns 503 while requests are still answered."""
        self.starting: set[str] = set()
        """Parts of the server still starting (the gRPC server): not ready until they are up."""
        self._failed: dict[int, tuple[tuple[str, int], ...]] = {}
        self._sync_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._prediction_counters: dict[tuple[int, int], Any] = {}
        self._announced_missing = False
        self._announced = False
        self.metrics.model_load_failures.labels(self.name)  # at 0 from the start

    @property
    def name(self) -> str:
        return self.settings.model_name

    @property
    def ready(self) -> bool:
        """This worker can answer now (serving, and no model call stuck past the budget), and
        every other worker of the server is serving."""
        return (
            self._serving()
            and not self._stalled()
            and not self.starting
            and self.workers.all_ready()
        )

    def _serving(self) -> bool:
        return bool(self.served) and not self.draining

    def _stalled(self) -> bool:
        budget = self.budget()
        return any(s.batcher.longest_call() > budget for s in self.served.values())

    def _publish_readiness(self) -> None:
        serving = self._serving()
        self.workers.set_ready(serving)
        if serving and not self._announced:
            self._announced = True
            base = self.settings.local_url
            log.info(
                "ready: draw a digit at %s/  API docs: %s/docs  metrics: %s/metrics", *[base] * 3
            )

    @property
    def default_version(self) -> int | None:
        return max(self.served) if self.served else None

    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="model-watcher")

    async def stop(self) -> None:
        """Answer everything already queued on every version, then release the models."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        async with self._sync_lock:
            leaving, self.served = self.served, {}
            self._publish_readiness()
            await asyncio.gather(*(self._unload(s) for s in leaving.values()))

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServedVersion:
        if name != self.name:
            raise ModelNotFound(f"model {shown(name)} not found; this server serves '{self.name}'")
        if label is not None:
            if label not in self.labels:
                raise ModelNotFound(f"model '{name}' has no label {shown(label)}")
            version = self.labels[label]
        served = self.served
        if not served:
            raise ModelNotReady(
                f"model '{name}' is not ready yet",
                {"Retry-After": str(self.settings.retry_after_seconds)},
            )
        if version is None:
            return served[max(served)]
        found = served.get(version)
        if found is None:
            available = ", ".join(str(v) for v in sorted(served))
            raise ModelNotFound(
                f"model '{name}' version {version} is not served; available: {available}"
            )
        return found

    def budget(self, requested_ms: float | None = None) -> float:
        """A request's time budget in seconds: the client's, if shorter than the server's."""
        limit = self.settings.request_timeout_ms
        return (limit if requested_ms is None else min(requested_ms, limit)) / 1000

    def admit(
        self,
        name: str,
        version: int | None,
        label: str | None,
        budget: float,
        images: int | None = None,
    ) -> None:
        """Refuse now what could not be answered in time: before its body is read, a request
        costs microseconds to refuse; after, it has cost a parse."""
        self.resolve(name, version, label).batcher.admit(images, budget)

    async def infer(
        self,
        images: npt.NDArray[np.float32],
        name: str,
        version: int | None = None,
        label: str | None = None,
        *,
        budget: float | None = None,
        abandoned: Callable[[], Awaitable[Any]] | None = None,
    ) -> Inference:
        """Run `images` on the resolved version within `budget` seconds (the server's default
        when None); `abandoned()` completes if the client goes away, dropping the request."""
        budget = self.budget() if budget is None else budget
        for attempt in range(2):
            served = self.resolve(name, version, label)
            gauge = served.in_flight
            gauge.inc()
            started = time.monotonic()
            try:
                probabilities = await served.batcher.submit(images, budget, abandoned)
            except VersionUnloading:
                # Resolved just before a reload swapped this version out: try the new set once.
                if attempt:
                    raise
                continue
            except BaseException:
                served.statistics.request_done(False, time.monotonic() - started)
                raise
            finally:
                gauge.dec()
            served.statistics.request_done(True, time.monotonic() - started)
            self._count_predictions(served.version, probabilities)
            model = served.model
            return Inference(
                probabilities,
                self.name,
                served.version,
                self.settings.unsure_below or model.unsure_below,
                model.signature_outputs,
            )
        raise AssertionError("unreachable")

    def set_label(self, label: str, version: int) -> None:
        if version not in self.served:
            raise InvalidInput(
                f"version {version} is not served; a label can only point at a served version"
            )
        self.labels[label] = version

    def remove_label(self, label: str) -> None:
        if self.labels.pop(label, None) is None:
            raise ModelNotFound(f"model '{self.name}' has no label '{label}'")

    def _count_predictions(self, version: int, probabilities: npt.NDArray[np.float32]) -> None:
        if len(probabilities) == 1:  # most requests: one numpy call instead of three
            self._prediction_counter(version, int(probabilities[0].argmax())).inc()
            return
        counts = np.bincount(probabilities.argmax(axis=1), minlength=10)
        for digit in np.flatnonzero(counts):
            self._prediction_counter(version, int(digit)).inc(int(counts[digit]))

    def _prediction_counter(self, version: int, digit: int) -> Any:
        counter = self._prediction_counters.get((version, digit))
        if counter is None:
            counter = self.metrics.predictions.labels(self.name, str(version), str(digit))
            self._prediction_counters[version, digit] = counter
        return counter

    def start_draining(self) -> None:
        self.draining = True
        self._publish_readiness()

    async def reload(self) -> dict[str, Any]:
        """Look at the repository now (the admin route); return what is served afterwards."""
        await self.sync()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "served_versions": sorted(self.served),
            "default_version": self.default_version,
            "labels": dict(self.labels),
            "versions": [
                {"version": s.version, "state": s.state.value, "error": s.error}
                for s in sorted(self.status.values(), key=lambda s: s.version)
            ],
        }

    async def _watch(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("model repository poll failed")
            self.metrics.sample_process()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.model_poll_seconds)

    def _wanted(self, on_disk: list[int]) -> list[int]:
        """The versions the policy asks for, skipping ones that failed and did not change."""
        usable = [
            v
            for v in on_disk
            if v in self.served or self._failed.get(v) != _fingerprint(self.repository.path(v))
        ]
        policy = self.settings.model_version_policy
        if policy == "all":
            return usable
        if policy == "specific":
            return [v for v in usable if v in self.settings.model_versions]
        return usable[-self.settings.model_latest_count :]

    async def sync(self) -> None:
        async with self._sync_lock:
            try:
                await self._sync()
            finally:
                self._publish_readiness()

    async def _sync(self) -> None:
        """Load what the policy wants, unload what it no longer does; then at most one heap
        collection for the whole change (see `refreeze_heap`), not one per load and unload."""
        try:
            on_disk = self.repository.versions()
        except RepositoryUnavailable as exc:
            # An unreadable repository (a mount gone, permissions changed) says nothing about
            # which versions should serve: keep serving what is loaded, and look again later.
            self.metrics.repository_errors.inc()
            log.error("model repository unreadable, keeping the served versions: %s", exc)
            return
        wanted = self._wanted(on_disk)
        changed: set[str] = set()  # the runtimes of the versions loaded or unloaded
        for version in sorted(set(wanted) - set(self.served), reverse=True):
            loaded = await self._load(version)
            if loaded is not None:
                changed.add(loaded.model.runtime)
                self.served = {**self.served, version: loaded}
                self.metrics.model_info.labels(self.name, str(version)).set(1)
        if not wanted and not on_disk:
            self._announce_missing()
        keep = set(wanted) & set(self.served)
        if not keep:
            # Nothing new could be loaded: what serves now goes on serving, unless deleted.
            keep = set(self.served) & set(on_disk)
        leaving = [s for v, s in self.served.items() if v not in keep]
        if leaving:
            self.served = {v: s for v, s in self.served.items() if v in keep}
            for served in leaving:
                log.info("unloading model '%s' version %d", self.name, served.version)
                changed.add(served.model.runtime)
            await asyncio.gather(*(self._unload(s) for s in leaving))
            del served
        del leaving  # the collection must find the unloaded versions unreferenced
        if changed:
            refreeze_heap(changed)

    def _announce_missing(self) -> None:
        if not self._announced_missing:
            log.warning(
                "no servable model yet: looking for versions of '%s' in %s; polling every %.1f s",
                self.name,
                self.repository.model_dir.resolve(),
                self.settings.model_poll_seconds,
            )
            self._announced_missing = True

    async def _load(self, version: int) -> ServedVersion | None:
        path = self.repository.path(version)
        self.status[version] = VersionStatus(version, ModelState.LOADING)
        fingerprint = _fingerprint(path)
        try:
            model = await asyncio.to_thread(self._load_and_check, version, path)
        except ModelLoadError as exc:
            self._failed[version] = fingerprint
            self.status[version] = VersionStatus(version, ModelState.END, str(exc))
            self.metrics.model_load_failures.labels(self.name).inc()
            self.metrics.reloads.labels("failure").inc()
            log.error("model '%s' version %d refused: %s", self.name, version, exc)
            return None
        self._failed.pop(version, None)
        self.status[version] = VersionStatus(version, ModelState.AVAILABLE)
        self.metrics.reloads.labels("success").inc()
        statistics = VersionStatistics(version)
        served = ServedVersion(
            model,
            self._make_batcher(model, statistics),
            self.metrics.in_flight.labels(self.name, str(version)),
            statistics,
        )
        served.batcher.start()
        log.info(
            "serving model '%s' version %d from %s on the %s runtime (loaded, warmed and "
            "checked in %.2f s)",
            self.name,
            version,
            path,
            model.runtime,
            model.load_seconds,
        )
        return served

    def _load_and_check(self, version: int, path: Path) -> LoadedModel:
        """Runs in a worker thread: loading TensorFlow and a SavedModel blocks for seconds."""
        started = time.monotonic()
        configure_tensorflow(self.settings.tf_intra_op_threads, self.settings.tf_inter_op_threads)
        settings = self.settings
        model = load_model(
            self.name,
            version,
            path,
            settings.runtime,
            settings.tf_intra_op_threads,
            settings.tflite_cache_dir,
        )
        try:
            check_runtime_agrees(model)
        except ModelLoadError as exc:
            if settings.runtime != "auto":
                raise
            fall_back_to_savedmodel(model, str(exc))
        model.reference = None  # checked: nothing needs the answers any more
        model.call_seconds = warm_up(model, (1, 2, 4, 8, 16, 32, settings.max_batch_size))
        deprioritise_compute_threads(settings.model_thread_niceness)
        if settings.correctness_gate:
            check_correctness(model, settings.correctness_margin)
        model.load_seconds = time.monotonic() - started
        self.metrics.model_load_seconds.observe(model.load_seconds)
        return model

    async def _unload(self, served: ServedVersion) -> None:
        version = served.version
        self.status[version] = VersionStatus(version, ModelState.UNLOADING)
        await served.batcher.close(give_up_after=self.settings.shutdown_timeout_seconds)
        self.metrics.queue_depth.labels(self.name, str(version)).set(0)
        self.status[version] = VersionStatus(version, ModelState.END)
        self.metrics.model_info.labels(self.name, str(version)).set(0)
        for label, target in list(self.labels.items()):
            if target == version:
                log.warning("label '%s' points at unloaded version %d", label, version)

    def _make_batcher(self, model: LoadedModel, statistics: VersionStatistics) -> DynamicBatcher:
        settings = self.settings
        return DynamicBatcher(
            model.predict,
            max_batch_size=settings.max_batch_size,
            max_batch_delay=settings.max_batch_delay_ms / 1000,
            max_queue_images=settings.max_queue_images,
            merge=settings.batching,
            retry_after_seconds=settings.retry_after_seconds,
            observer=BatcherMetrics(self.metrics, self.name, model.version, statistics),
            cost=CostModel(model.call_seconds),
            max_queue_delay=settings.max_queue_delay_ms / 1000,
            tracer=self.tracing,
            thread_setup=functools.partial(lower_thread_priority, settings.model_thread_niceness),
        )
