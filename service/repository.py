"""Which versions of a model exist on disk, laid out as TF Serving's `<root>/<name>/<version>/`."""

from __future__ import annotations

from pathlib import Path


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
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []
        return sorted(
            int(entry.name)
            for entry in entries
            if entry.name.isdigit() and int(entry.name) > 0 and entry.is_dir()
        )

    def path(self, version: int) -> Path:
        return self.model_dir / str(version)
