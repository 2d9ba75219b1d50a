"""Turning JSON-ish numbers into the model's input, with an error that says what was wrong.

All three HTTP APIs end here, so "ragged rows", "not a number" and "outside 0-255" read the same
whichever protocol the client speaks.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from service.errors import InvalidInput, MalformedRequest
from service.fastjson import Path, parse_with_blocks

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE
ACCEPTED_LAYOUTS = "28x28 nested lists, 784 flat numbers or 28x28x1"


def parse_json(body: bytes, blocks: frozenset[Path] = frozenset()) -> Any:
    """orjson for speed; the standard library only to tell NaN/Infinity apart from garbage.

    NaN and Infinity are not JSON, but some clients (and TF Serving) write them; such a body is
    understood and then refused for its values (422), not for its syntax (400). The pixel arrays
    at `blocks` come back as ndarrays when service.fastjson can prove them (the common case).
    """
    if blocks and (parsed := parse_with_blocks(body, blocks)) is not None:
        return parsed
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body, parse_float=_finite, parse_int=_integer)
        except (ValueError, RecursionError):
            raise MalformedRequest(f"request body is not valid JSON: {exc}") from None


def _finite(text: str) -> float:
    """A number literal beyond a double (1e400) is valid JSON that no value here can be; the
    standard library would make it an infinity the client never wrote."""
    value = float(text)
    if math.isinf(value):
        raise InvalidInput(f"the number {text[:40]} is too large for any value here")
    return value


def _integer(text: str) -> int | float:
    """Integers past 64 bits (which orjson refuses) as numbers numpy can hold, or refused."""
    return int(text) if len(text) <= 18 else _finite(text)


def may_hold_booleans(body: bytes) -> bool:
    """numpy turns `[true, 3]` into `[1, 3]` silently; only a body with the tokens needs a look."""
    return b"true" in body or b"false" in body


def images_from_nested(
    values: Any, *, field: str, max_images: int, check_booleans: bool = True
) -> npt.NDArray[np.float32]:
    """A list of images, each 28x28, 784 flat or 28x28x1, to a (N, 28, 28, 1) float32 array."""
    if not isinstance(values, list | np.ndarray):
        raise InvalidInput(f"'{field}' must be a list of images, got {_json_type(values)}")
    if not len(values):
        raise InvalidInput(f"'{field}' is empty: send at least one image")
    if len(values) > max_images:
        raise InvalidInput(
            f"'{field}' holds {len(values)} images; at most {max_images} per request"
        )
    array = to_number_array(values, field, check_booleans)
    count = array.shape[0]
    if array.shape[1:] not in ((IMAGE_SIDE, IMAGE_SIDE), (PIXELS,), (IMAGE_SIDE, IMAGE_SIDE, 1)):
        raise InvalidInput(
            f"'{field}' images have shape {list(array.shape[1:])}; each image must be "
            f"{ACCEPTED_LAYOUTS}"
        )
    return check_pixels(array.reshape(count, IMAGE_SIDE, IMAGE_SIDE, 1), field)


def to_number_array(values: Any, field: str, check_booleans: bool = True) -> npt.NDArray[Any]:
    """numpy does the walking (fast); on failure, find the first offending element to name it."""
    if isinstance(values, np.ndarray):  # parsed by service.fastjson: proven numbers
        return values
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(_describe_irregularity(values, field)) from None
    if array.dtype.kind not in "iuf" or (check_booleans and _first_problem(values, []) is not None):
        raise InvalidInput(_describe_irregularity(values, field))
    return array


def check_pixels(array: npt.NDArray[Any], field: str) -> npt.NDArray[np.float32]:
    """The images as float32, once every value as sent is a pixel (0-255).

    Checked before the cast: float32 rounds 255.000001 to 255 and 1e39 to infinity, which let
    the one in and called the other an infinity the client never sent."""
    if array.dtype == np.uint8:  # 0-255 by its type
        return array.astype(np.float32, copy=False)
    low, high = array.min(), array.max()
    if low >= 0 and high <= 255:  # NaN fails both tests, and an infinity the second
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        index = np.unravel_index(int(np.argmax(~np.isfinite(array))), array.shape)
        raise InvalidInput(
            f"'{field}' image {index[0]} holds {array[index]}: NaN and Infinity are not pixel "
            "values (0-255)"
        )
    bad = np.argmax((array < 0) | (array > 255))
    index = np.unravel_index(int(bad), array.shape)
    raise InvalidInput(
        f"'{field}' image {index[0]} has value {shown_number(array[index])} at row {index[1]}, "
        f"column {index[2]}; pixels must be in 0-255 (0 background, 255 ink)"
    )


def shown_number(value: np.generic) -> str:
    """A value as the client wrote it: 300 (not 300.0 or 3e+02), 255.00001, 1e+39."""
    number = value.item()
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    return str(value)


def _describe_irregularity(values: Any, field: str) -> str:
    """Explain why a nested list is not a regular block of numbers."""
    problem = _first_problem(values, [])
    if problem is None:
        return f"'{field}' must hold numbers only, in a regular (non-ragged) shape"
    path, message = problem
    where = "".join(f"[{i}]" for i in path)
    return f"'{field}{where}': {message}"


def _first_problem(value: Any, path: list[int]) -> tuple[list[int], str] | None:
    if isinstance(value, bool):
        return path, "true/false is not a pixel value; send numbers"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return path, f"{value} is not a pixel value (0-255)"
        return None
    if not isinstance(value, list):
        return path, f"expected a number, got {_json_type(value)}"
    if len(path) >= 4:
        return path, "nested too deeply for an image"
    lengths = {len(item) if isinstance(item, list) else -1 for item in value}
    if len(lengths) > 1:
        shapes = sorted("a number" if n < 0 else f"{n} entries" for n in lengths)
        return path, f"ragged: its items have different lengths ({', '.join(shapes)})"
    for index, item in enumerate(value):
        found = _first_problem(item, [*path, index])
        if found is not None:
            return found
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value[:20]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number"
