"""Which versions of a model exist on disk, laid out as TF Serving's `<root>/<name>/<version>/`."""

from __future__ import annotations

from pathlib import Path

from service.params import MAX_VERSION_DIGITS, parse_decimal


class RepositoryUnavailable(OSError):
    """The repository exists but cannot be read now (permissions, a stale network mount)."""


class ModelRepository:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name

    @property
    def model_dir(self) -> Path:
        return self.root / self.name

    def versions(self) -> list[int]:
        """Published versions, oldest first.

        Only directories named by a positive integer count: the exporter's hidden staging
        directories become versions by one atomic rename, so a listed version is complete.
        """
        try:
            entries = list(self.model_dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot list {self.model_dir}: {exc}") from exc
        versions = ((parse_decimal(entry.name, MAX_VERSION_DIGITS), entry) for entry in entries)
        return sorted(v for v, entry in versions if v and entry.is_dir())

    def path(self, version: int) -> Path:
        return self.model_dir / str(version)
