"""The simdjson fast path must never accept what the standard parser would not, nor change a value.

The property: for any body, when `parse_with_blocks` answers, its answer equals orjson's with the
block turned into an array by numpy; when it cannot prove the body it says so (None), and the
standard path decides. The hand-made cases are the ways simdjson's flattening could hide a ragged
array.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.decoding import images_from_nested, may_hold_booleans, parse_json
from service.errors import InvalidInput, ServingError
from service.fastjson import Path, parse_with_blocks
from service.protocols import native, tfserving, v2
from service.settings import Settings
from tests.service.test_errors import CASES as ERROR_TABLE

INSTANCES: frozenset[Path] = frozenset({("instances",)})
V2_DATA: frozenset[Path] = frozenset({("inputs", "*", "data")})


def same(fast: Any, slow: Any) -> bool:
    if isinstance(fast, np.ndarray):
        expected = np.asarray(slow)
        return (
            expected.dtype.kind in "iuf"
            and fast.shape == expected.shape
            and bool((fast == expected).all())
        )
    if isinstance(fast, dict):
        return (
            isinstance(slow, dict)
            and list(fast) == list(slow)
            and all(same(fast[k], slow[k]) for k in fast)
        )
    if isinstance(fast, list):
        return (
            isinstance(slow, list)
            and len(fast) == len(slow)
            and all(same(a, b) for a, b in zip(fast, slow, strict=True))
        )
    return type(fast) is type(slow) and fast == slow


def test_regular_blocks_come_back_as_arrays() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).tolist()
    parsed = parse_with_blocks(orjson.dumps({"instances": images, "note": "x"}), INSTANCES)
    assert parsed is not None
    assert parsed["note"] == "x"
    assert parsed["instances"].shape == (3, 28, 28)
    assert (parsed["instances"] == np.asarray(images)).all()
    flat = {"inputs": [{"name": "input", "shape": [1, 784], "data": [7.5] * 784}]}
    parsed = parse_with_blocks(orjson.dumps(flat), V2_DATA)
    assert parsed is not None
    assert parsed["inputs"][0]["shape"] == [1, 784]
    assert parsed["inputs"][0]["data"].shape == (784,)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2], [3, 4, 5], [6]]}',  # as many numbers and lists as a 3x2 block
        b'{"instances": [[1, 2], [3, [4]]]}',
        b'{"instances": [[[5], 1], [2, 3]]}',
        b'{"instances": [[[], 1, 2], [3, [4, 5]]]}',  # an empty list made up by a longer one
        b'{"instances": [[1, 2], [3, 4]], "instances": [[9]]}',  # duplicate key
        b'{"instances": [[1, true]]}',
        b'{"instances": [[1, null]]}',
        b'{"instances": [[1, "2"]]}',
        b'{"instances": [[1, 300]]}',  # outside 0-255: the standard path words the error
        b'{"instances": [[1, -1]]}',
        b'{"instances": [[1, NaN]]}',
        b'{"instances": [[1, 1e999]]}',
        b'{"instances": [[1, 99999999999999999999999]]}',
        b'{"instances": []}',
        b'{"instances": [[]]}',
        b'{"instances": [[[[1]]]]}',  # deeper than an image of rows
        b'{"instances": [[1, 2]], "tag": "[["}',  # a bracket in a string
        b'{"instances": [[1, 2]]',
        b"",
    ],
)
def test_what_the_fast_path_cannot_prove_goes_to_the_standard_parser(body: bytes) -> None:
    assert parse_with_blocks(body, INSTANCES) is None


def test_error_messages_are_the_standard_paths() -> None:
    body = b'{"instances": [[[1, 2], [3, 4, 5], [6]]]}'
    with pytest.raises(InvalidInput, match="ragged"):
        images_from_nested(parse_json(body, INSTANCES)["instances"], field="i", max_images=4)


def test_a_reused_parser_after_an_error_still_parses() -> None:
    for _ in range(3):
        assert parse_with_blocks(b'{"instances": [[1, true]]}', INSTANCES) is None
        parsed = parse_with_blocks(b'{"instances": [[1, 2]]}', INSTANCES)
        assert parsed is not None
        assert parsed["instances"].tolist() == [[1, 2]]


pixels = st.integers(0, 255) | st.floats(0, 255)
leaf = (
    pixels
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
    | st.text(alphabet="[]ab", max_size=3)
)
nested = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=40)
regular = st.integers(1, 3).flatmap(
    lambda rows: st.integers(1, 4).flatmap(
        lambda cols: st.lists(
            st.lists(st.lists(pixels, min_size=cols, max_size=cols), min_size=rows, max_size=rows),
            min_size=1,
            max_size=3,
        )
    )
)


@given(
    block=regular | nested,
    extra=st.dictionaries(st.sampled_from(["a", "b", "instances"]), nested, max_size=2),
)
@settings(max_examples=400, deadline=None, derandomize=True)
def test_the_fast_path_agrees_with_orjson(block: Any, extra: dict[str, Any]) -> None:
    body = json.dumps({"instances": block, **extra}).encode()
    fast = parse_with_blocks(body, INSTANCES)
    if fast is not None:
        assert same(fast, json.loads(body))


@given(block=regular)
@settings(max_examples=100, deadline=None, derandomize=True)
def test_every_regular_block_of_pixels_takes_the_fast_path(block: Any) -> None:
    body = orjson.dumps({"instances": block, "signature_name": "serving_default"})
    fast = parse_with_blocks(body, INSTANCES)
    assert fast is not None
    assert same(fast, orjson.loads(body))


def decode(path: str, body: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch) -> object:
    """What the route's decoding makes of `body`: the images, or the error it raises."""
    settings = Settings(max_request_images=4)
    try:
        if path.startswith("/v2/"):
            if not fast:
                monkeypatch.setattr(v2, "PIXEL_BLOCKS", frozenset())
            return v2.decode_infer_request(body, None, settings).images
        if path.startswith("/v1/models/"):
            payload = parse_json(body, tfserving.PIXEL_BLOCKS if fast else frozenset())
            return tfserving.images_from_tfs_payload(payload, 4, may_hold_booleans(body))[0]
        payload = parse_json(body, native.PIXEL_BLOCKS if fast else frozenset())
        return native.images_from_native_payload(payload, 4, may_hold_booleans(body))
    except ServingError as error:
        return type(error), error.message


@pytest.mark.parametrize(
    ("path", "body"),
    [(case[1], case[2]) for case in ERROR_TABLE if case[3] == "application/json"],
    ids=[case[0] for case in ERROR_TABLE if case[3] == "application/json"],
)
def test_the_error_table_decodes_the_same_with_and_without_the_fast_path(
    path: str, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = decode(path, body, True, monkeypatch)
    standard = decode(path, body, False, monkeypatch)
    if isinstance(standard, np.ndarray):  # the route refuses it later (model, version...)
        assert isinstance(fast, np.ndarray)
        assert (fast == standard).all()
    else:
        assert fast == standard
