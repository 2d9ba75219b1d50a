"""The MNIST loader on tiny IDX files written here: every way a file can be wrong."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from training.data import FILES, MnistDataError, load_mnist

N_TRAIN, N_TEST = 5, 3


def idx_images(count: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    return struct.pack(">IIII", 0x803, count, 28, 28) + pixels.tobytes()


def idx_labels(count: int) -> bytes:
    return struct.pack(">II", 0x801, count) + bytes(i % 10 for i in range(count))


def tiny_files() -> dict[str, bytes]:
    return {
        FILES["train_images"]: idx_images(N_TRAIN, 1),
        FILES["train_labels"]: idx_labels(N_TRAIN),
        FILES["test_images"]: idx_images(N_TEST, 2),
        FILES["test_labels"]: idx_labels(N_TEST),
    }


def sums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(raw).hexdigest() for name, raw in files.items()}


def write(directory: Path, files: dict[str, bytes], gzipped: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        if gzipped:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzipped"])
def test_valid_files_load_with_shapes_and_checksums(tmp_path: Path, gzipped: bool) -> None:
    files = tiny_files()
    write(tmp_path, files, gzipped)
    splits = load_mnist(tmp_path, download=False, expected_sha256=sums(files))
    assert splits.train_images.shape == (N_TRAIN, 28, 28)
    assert splits.test_images.shape == (N_TEST, 28, 28)
    assert splits.train_labels.tolist() == [0, 1, 2, 3, 4]
    assert splits.train_images.dtype == np.uint8
    assert splits.checksums == sums(files)


def test_mnist_dir_environment_variable_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tiny_files()
    write(tmp_path, files)
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    assert load_mnist(download=False, expected_sha256=sums(files)).source == tmp_path


def corrupt(files: dict[str, bytes], name: str, how: str) -> dict[str, bytes]:
    raw = files[name]
    changed = {
        "truncated": raw[:-10],
        "wrong_magic": struct.pack(">I", 0x0803 + 0x100) + raw[4:],
        "short_header": raw[:6],
    }[how]
    return {**files, name: changed}


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "truncated or oversized"),
        ("wrong_magic", "wrong magic number"),
        ("short_header", "too short for an IDX header"),
    ],
)
def test_damaged_file_names_the_file(tmp_path: Path, how: str, message: str) -> None:
    files = corrupt(tiny_files(), FILES["train_images"], how)
    write(tmp_path, files)
    with pytest.raises(MnistDataError, match=message) as error:
        load_mnist(tmp_path, download=False, expected_sha256={})
    assert FILES["train_images"] in str(error.value)


def test_wrong_checksum_names_the_file_and_both_digests(tmp_path: Path) -> None:
    files = tiny_files()
    write(tmp_path, files, gzipped=True)
    expected = {**sums(files), FILES["test_labels"]: "0" * 64}
    with pytest.raises(MnistDataError) as error:
        load_mnist(tmp_path, download=False, expected_sha256=expected)
    message = str(error.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "0" * 64 in message
    assert sums(files)[FILES["test_labels"]] in message


def test_corrupt_gzip_is_reported_not_raised_from_gzip(tmp_path: Path) -> None:
    files = tiny_files()
    write(tmp_path, files, gzipped=True)
    target = tmp_path / f"{FILES['train_labels']}.gz"
    target.write_bytes(target.read_bytes()[:15])
    with pytest.raises(MnistDataError, match="cannot read the file"):
        load_mnist(tmp_path, download=False, expected_sha256=sums(files))


def test_missing_files_without_download_point_at_mnist_dir(tmp_path: Path) -> None:
    with pytest.raises(MnistDataError) as error:
        load_mnist(tmp_path / "nowhere", download=False)
    message = str(error.value)
    assert "MNIST_DIR" in message
    assert str(tmp_path / "nowhere") in message


def test_official_checksums_are_enforced_by_default(tmp_path: Path) -> None:
    write(tmp_path, tiny_files())
    with pytest.raises(MnistDataError, match="not the official MNIST file"):
        load_mnist(tmp_path, download=False)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on 127.0.0.1 serving gzipped IDX files like the public mirrors."""
    files = tiny_files()
    served = tmp_path / "mirror"
    write(served, files, gzipped=True)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", files
    finally:
        server.shutdown()


def test_absent_files_are_downloaded_and_verified(
    tmp_path: Path, mirror: tuple[str, dict[str, bytes]]
) -> None:
    url, files = mirror
    target = tmp_path / "cache"
    dead_mirror = "http://127.0.0.1:9/"  # nothing listens on the discard port
    splits = load_mnist(target, mirrors=[dead_mirror, url], expected_sha256=sums(files))
    assert splits.train_labels.tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in files)


def test_download_with_wrong_checksum_keeps_nothing_and_explains(
    tmp_path: Path, mirror: tuple[str, dict[str, bytes]]
) -> None:
    url, files = mirror
    target = tmp_path / "cache"
    bad = {name: "f" * 64 for name in files}
    with pytest.raises(MnistDataError) as error:
        load_mnist(target, mirrors=[url], expected_sha256=bad)
    message = str(error.value)
    assert "MNIST_DIR" in message
    assert "sha256" in message
    assert list(target.iterdir()) == []


def test_unreachable_mirrors_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MnistDataError) as error:
        load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"])
    message = str(error.value)
    assert "could not download" in message
    assert "MNIST_DIR" in message
    assert "127.0.0.1:9" in message
