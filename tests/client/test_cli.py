"""`mnist-predict` as a user runs it: in-process and against a server, same answers as the
upload endpoint, every output format, and the exit status when files cannot be read."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.images import prepare_upload
from tests.conftest import LiveServer
from tests.service.test_server import metric, scrape

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIGIT_FILES = sorted((EXAMPLES / "digits").glob("*.png"))


def mnist_predict(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mnist_client.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def upload_answers(server: LiveServer, files: list[Path]) -> list[dict[str, object]]:
    with server.client() as client:
        response = client.post(
            "/v1/predict/image", files=[("file", (f.name, f.read_bytes())) for f in files]
        )
    assert response.status_code == 200
    return list(response.json()["predictions"])


def test_in_process_answers_are_the_upload_endpoints(
    served_model: LiveServer, trained_repository: Path
) -> None:
    result = mnist_predict(EXAMPLES / "digits", "--model-repository", trained_repository, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [Path(r["file"]).name for r in rows] == [f.name for f in DIGIT_FILES]
    served = upload_answers(served_model, DIGIT_FILES)
    assert [r["digit"] for r in rows] == [p["digit"] for p in served]
    assert np.allclose(
        [r["probabilities"] for r in rows], [p["probabilities"] for p in served], atol=1e-5
    )
    assert {r["model_version"] for r in rows} == {"1"}


def test_against_a_server_as_csv(served_model: LiveServer) -> None:
    result = mnist_predict(EXAMPLES / "digits", "--url", served_model.url, "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    served = upload_answers(served_model, DIGIT_FILES)
    assert [int(r["digit"]) for r in rows] == [p["digit"] for p in served]
    assert all(r["error"] == "" for r in rows)
    assert abs(sum(float(r[f"p{d}"]) for d in range(10) for r in rows[:1]) - 1) < 1e-4


def test_bad_files_are_reported_and_the_rest_answered(
    served_model: LiveServer, trained_repository: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a-seven.png").write_bytes((EXAMPLES / "digits" / "7.png").read_bytes())
    (folder / "b-broken.png").write_bytes(b"this is not a picture")
    (folder / "c-blank.png").write_bytes(blank_png())
    (folder / "notes.txt").write_text("not an image: skipped when a folder is listed")
    pattern = str(folder / "*.png")
    for where in (["--model-repository", str(trained_repository)], ["--url", served_model.url]):
        result = mnist_predict(pattern, str(tmp_path / "missing.png"), *where, "--json")
        assert result.returncode == 1, result.stderr
        assert "missing.png: no such file" in result.stderr
        assert "2 of 3 files failed" in result.stderr
        rows = {Path(r["file"]).name: r for r in json.loads(result.stdout)}
        assert set(rows) == {"a-seven.png", "b-broken.png", "c-blank.png"}
        assert "digit" in rows["a-seven.png"]
        assert "cannot" in rows["b-broken.png"]["error"] or "image" in rows["b-broken.png"]["error"]
        assert "ink" in rows["c-blank.png"]["error"]


def test_table_output_and_nothing_to_do(trained_repository: Path, tmp_path: Path) -> None:
    result = mnist_predict(EXAMPLES / "digit.png", "--model-repository", trained_repository)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["file", "digit", "probability"]
    assert row.split()[0].endswith("digit.png")
    nothing = mnist_predict(tmp_path / "*.png", "--model-repository", trained_repository)
    assert nothing.returncode == 2
    assert "no image files" in nothing.stderr


def blank_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_photos_too_slow_to_prepare_in_one_request_are_sent_again_in_smaller_groups(
    served_model: LiveServer, tmp_path: Path
) -> None:
    """The CLI sends 16 pictures per request. Large photos can take the server past the budget
    in a group that size (504 `deadline_exceeded`, "send fewer images per request"): the CLI
    then sends each half again, so every photo is still answered."""
    sheet = np.full((2250, 3000), 230, np.uint8)
    sheet[450:1800, 1440:1560] = 20  # a one, on a large smooth page: slow to decode
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    for index in range(16):
        (tmp_path / f"photo-{index:02}.png").write_bytes(buffer.getvalue())
    started = time.perf_counter()
    for _ in range(3):
        prepare_upload(buffer.getvalue(), 40_000_000)
    one = (time.perf_counter() - started) / 3
    # Planned room for six photos' time (the server gets 90% of the timeout and plans with
    # 80% of that): 16 photos on two threads are too many, 8 are not.
    budget = 6 * one / (0.9 * 0.8)
    before = scrape(served_model)
    result = mnist_predict(
        tmp_path, "--url", served_model.url, "--json", "--timeout", f"{budget:.3f}"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 16
    assert all(row.get("digit") == 1 for row in rows), rows
    late = {"route": "/v1/predict/image", "status": "504"}
    assert metric(scrape(served_model), "http_requests_total", **late) > metric(
        before, "http_requests_total", **late
    )
