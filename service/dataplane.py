"""The protocol-independent core every API calls: which model is served, and `infer`.

It owns the model's lifetime: loading in the background (so `/healthz` answers while TensorFlow
warms up), the batcher in front of the model, and draining on shutdown.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.batcher import DynamicBatcher
from service.errors import ModelNotFound, ModelNotReady
from service.metrics import BatcherMetrics, Metrics
from service.repository import ModelRepository
from service.runtime import (
    LoadedModel,
    ModelLoadError,
    configure_tensorflow,
    load_model,
    warm_up,
)
from service.settings import Settings

log = logging.getLogger("service.dataplane")


class ModelState(enum.StrEnum):
    """Named as TensorFlow Serving's `ModelVersionStatus.State` so its status route maps 1:1."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(eq=False)
class ServedVersion:
    model: LoadedModel
    batcher: DynamicBatcher

    @property
    def version(self) -> int:
        return self.model.version


@dataclass(frozen=True)
class Inference:
    probabilities: npt.NDArray[np.float32]
    model_name: str
    version: int


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = ModelRepository(settings.model_repository, settings.model_name)
        self.state = ModelState.START
        self.served: ServedVersion | None = None
        self.load_errors: dict[int, str] = {}
        self._loader: asyncio.Task[None] | None = None
        self._prediction_counters: dict[tuple[int, int], object] = {}

    @property
    def name(self) -> str:
        return self.settings.model_name

    @property
    def ready(self) -> bool:
        return self.state is ModelState.AVAILABLE and self.served is not None

    async def start(self) -> None:
        self._loader = asyncio.create_task(self._load_when_available(), name="model-loader")

    async def stop(self) -> None:
        """Answer everything already queued, then release the model."""
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)
        served, self.served = self.served, None
        if served is not None:
            self.state = ModelState.UNLOADING
            await served.batcher.close()
            self.metrics.model_info.labels(self.name, str(served.version)).set(0)
        self.state = ModelState.END

    def resolve(self, name: str, version: int | None = None) -> ServedVersion:
        if name != self.name:
            raise ModelNotFound(f"model '{name}' not found; this server serves '{self.name}'")
        served = self.served
        if served is None or not self.ready:
            raise ModelNotReady(
                f"model '{name}' is not ready yet (state {self.state.value})",
                {"Retry-After": str(self.settings.retry_after_seconds)},
            )
        if version is not None and version != served.version:
            raise ModelNotFound(
                f"model '{name}' version {version} is not served; available: {served.version}"
            )
        return served

    async def infer(
        self, images: npt.NDArray[np.float32], name: str, version: int | None = None
    ) -> Inference:
        served = self.resolve(name, version)
        timeout = self.settings.request_timeout_ms / 1000
        probabilities = await served.batcher.submit(images, timeout)
        self._count_predictions(served.version, probabilities)
        return Inference(probabilities, self.name, served.version)

    def _count_predictions(self, version: int, probabilities: npt.NDArray[np.float32]) -> None:
        counts = np.bincount(probabilities.argmax(axis=1), minlength=10)
        for digit in np.flatnonzero(counts):
            key = (version, int(digit))
            counter = self._prediction_counters.get(key)
            if counter is None:
                counter = self.metrics.predictions.labels(self.name, str(version), str(digit))
                self._prediction_counters[key] = counter
            counter.inc(int(counts[digit]))  # type: ignore[attr-defined]

    async def _load_when_available(self) -> None:
        """Poll the repository until a version loads; log once where we looked."""
        settings = self.settings
        announced_missing = False
        while True:
            version = self._choose_version()
            if version is None or version in self.load_errors:
                if not announced_missing:
                    wanted = (
                        f"version {settings.model_version}"
                        if settings.model_version
                        else "a version"
                    )
                    log.warning(
                        "no servable model yet: looking for %s of '%s' in %s; polling every %.1f s",
                        wanted,
                        self.name,
                        self.repository.model_dir.resolve(),
                        settings.model_poll_seconds,
                    )
                    announced_missing = True
                await asyncio.sleep(settings.model_poll_seconds)
                continue
            self.state = ModelState.LOADING
            try:
                model = await asyncio.to_thread(self._load, version)
            except ModelLoadError as exc:
                self.load_errors[version] = str(exc)
                self.metrics.model_load_failures.labels(self.name).inc()
                log.error("model version %d failed to load: %s", version, exc)
                self.state = ModelState.START
                continue
            served = ServedVersion(model, self._make_batcher(model))
            served.batcher.start()
            self.served = served
            self.state = ModelState.AVAILABLE
            self.metrics.model_info.labels(self.name, str(version)).set(1)
            log.info(
                "serving model '%s' version %d from %s (loaded and warmed in %.2f s)",
                self.name,
                version,
                served.model.path,
                served.model.load_seconds,
            )
            return

    def _choose_version(self) -> int | None:
        versions = self.repository.versions()
        pinned = self.settings.model_version
        if pinned is not None:
            return pinned if pinned in versions else None
        return versions[-1] if versions else None

    def _load(self, version: int) -> LoadedModel:
        """Runs in a worker thread: TensorFlow loading blocks for seconds."""
        started = time.monotonic()
        configure_tensorflow(self.settings.tf_intra_op_threads, self.settings.tf_inter_op_threads)
        model = load_model(self.name, version, self.repository.path(version))
        warm_up(model, (1, 2, 4, 8, 16, 32, self.settings.max_batch_size))
        model.load_seconds = time.monotonic() - started
        self.metrics.model_load_seconds.observe(model.load_seconds)
        return model

    def _make_batcher(self, model: LoadedModel) -> DynamicBatcher:
        settings = self.settings
        return DynamicBatcher(
            model.predict,
            max_batch_size=settings.max_batch_size,
            max_batch_delay=settings.max_batch_delay_ms / 1000,
            max_queue_images=settings.max_queue_images,
            merge=settings.batching,
            retry_after_seconds=settings.retry_after_seconds,
            observer=BatcherMetrics(self.metrics),
        )
