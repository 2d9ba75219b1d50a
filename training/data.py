"""Finding, downloading, verifying and parsing the four MNIST IDX files.

Every failure becomes a `MnistDataError` whose message names the file and what is wrong with it,
so a user never has to read a traceback from inside numpy or gzip to learn that a download was cut.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# sha256 of each file after decompression: the canonical values other projects pin too, so the
# check holds whatever the compression (mirrors' gzip wrappings differ byte for byte).
MNIST_TRAIN_IMAGES = 60_000
"""Images in the standard training set."""

CANONICAL_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# The public mirrors torchvision and TensorFlow Datasets use; LeCun's own site is last because it
# often answers 403 to scripts.
CANONICAL_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

ProgressFactory = Callable[[str, int | None], "ProgressSink"]


class MnistDataError(RuntimeError):
    """The MNIST files are missing, unreadable or not what they claim to be."""


class ProgressSink:
    """Receives download progress; the CLI plugs a tqdm bar in, tests and libraries stay quiet."""

    def update(self, n: int) -> None:
        """Called with the number of bytes just received."""

    def close(self) -> None:
        """Called once the download ended, successfully or not."""


@dataclass(frozen=True)
class MnistSplits:
    """The four arrays, images as uint8 (N, 28, 28) with 0 background and 255 ink."""

    train_images: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.uint8]
    test_images: npt.NDArray[np.uint8]
    test_labels: npt.NDArray[np.uint8]
    checksums: Mapping[str, str]
    source: Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-serving" / "mnist"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """`--data-dir` wins, then `MNIST_DIR`, then the per-user cache directory."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("MNIST_DIR")
    if env:
        return Path(env)
    return default_cache_dir()


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] = CANONICAL_MIRRORS,
    expected_sha256: Mapping[str, str] = CANONICAL_SHA256,
    progress: ProgressFactory | None = None,
) -> MnistSplits:
    """Load the four files from `data_dir`, downloading what is absent when `download` is set."""
    directory = resolve_data_dir(data_dir)
    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    checksums: dict[str, str] = {}
    for key, name in FILES.items():
        path = find_file(directory, name)
        if path is None:
            if not download:
                raise MnistDataError(_missing_message(directory, name, tried_download=False))
            path = download_file(directory, name, mirrors, expected_sha256, progress)
        raw = read_decompressed(path)
        checksums[name] = verify_sha256(path, raw, expected_sha256.get(name))
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        arrays[key] = parse_idx(path, raw, magic)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise MnistDataError(
                f"{split} split has {len(images)} images but {len(labels)} labels "
                f"in {directory}: the files do not belong together"
            )
        if labels.size and labels.max() > 9:
            raise MnistDataError(f"{split} labels in {directory} contain {labels.max()}, not 0-9")
    return MnistSplits(**arrays, checksums=checksums, source=directory)


def find_file(directory: Path, name: str) -> Path | None:
    """The plain file is preferred over its `.gz` so a user may decompress once for speed."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_decompressed(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MnistDataError(f"{path}: cannot read the file ({exc}); delete it and retry") from exc


def verify_sha256(path: Path, raw: bytes, expected: str | None) -> str:
    digest = hashlib.sha256(raw).hexdigest()
    if expected is not None and digest != expected:
        raise MnistDataError(
            f"{path}: sha256 of the decompressed content is {digest}, expected {expected}; "
            "the file is corrupt or not the official MNIST file"
        )
    return digest


def parse_idx(path: Path, raw: bytes, expected_magic: int) -> npt.NDArray[np.uint8]:
    """Parse an IDX byte string, checking the magic number and that the size matches the header."""
    if len(raw) < 8:
        raise MnistDataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise MnistDataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"for an MNIST {kind} file"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise MnistDataError(f"{path}: truncated header ({len(raw)} of {header_size} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    if ndim == 3 and shape[1:] != (28, 28):
        raise MnistDataError(f"{path}: images are {shape[1]}x{shape[2]}, expected 28x28")
    expected_size = header_size + int(np.prod(shape))
    if len(raw) != expected_size:
        raise MnistDataError(
            f"{path}: truncated or oversized, {len(raw)} bytes where the header "
            f"{tuple(shape)} needs {expected_size}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def download_file(
    directory: Path,
    name: str,
    mirrors: Sequence[str],
    expected_sha256: Mapping[str, str],
    progress: ProgressFactory | None,
) -> Path:
    """Try each mirror in turn; a file only lands under its final name once its checksum holds."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistDataError(
            _missing_message(directory, name, tried_download=False) + f" (cannot create it: {exc})"
        ) from exc
    target = directory / f"{name}.gz"
    failures: list[str] = []
    for mirror in mirrors:
        url = f"{mirror}{name}.gz"
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, progress)
            raw = read_decompressed(tmp)
            verify_sha256(Path(url), raw, expected_sha256.get(name))
            tmp.replace(target)
            return target
        except (OSError, urllib.error.URLError, MnistDataError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise MnistDataError(
        _missing_message(directory, name, tried_download=True)
        + "\nDownload attempts:\n  "
        + "\n  ".join(failures)
    )


def _fetch(url: str, out: BinaryIO, progress: ProgressFactory | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-serving"})
    with urllib.request.urlopen(request, timeout=30) as response:
        length = response.headers.get("Content-Length")
        sink = progress(url, int(length) if length else None) if progress else ProgressSink()
        try:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                sink.update(len(chunk))
        finally:
            sink.close()


def _missing_message(directory: Path, name: str, *, tried_download: bool) -> str:
    action = "and could not download it" if tried_download else "(downloading is off)"
    return (
        f"MNIST file {name}[.gz] not found in {directory} {action}. "
        "Put the four standard MNIST files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
        "in a directory and point MNIST_DIR (or --data-dir) at it."
    )
