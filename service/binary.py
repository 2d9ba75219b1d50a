"""Binary image bodies for backend clients: raw uint8 pixels, or a NumPy `.npy` file.

A backend that already holds its images as an array should not spell 784 numbers per image in
JSON for us to parse back: raw bytes are read in microseconds. Both forms end in the same checks
as JSON (image count, shape, 0-255), with the same error statuses: framing 400, content 422.
The `.npy` header is read and checked before any array is made, so a file that declares a
huge shape costs nothing (numpy's own loader would allocate that shape first).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from service.decoding import IMAGE_SIDE, PIXELS, check_pixels
from service.errors import InvalidInput, MalformedRequest
from service.params import shown_shape

RAW_MEDIA_TYPE = "application/octet-stream"
NPY_MEDIA_TYPE = "application/x-npy"
_NPY_SHAPES = "(N, 28, 28), (N, 784) or (N, 28, 28, 1)"


def images_from_raw(body: bytes, max_images: int) -> npt.NDArray[np.float32]:
    """N images of 784 uint8 pixels each, row by row: N x 784 bytes, nothing else."""
    count, rest = divmod(len(body), PIXELS)
    if rest or not count:
        raise InvalidInput(
            f"a {RAW_MEDIA_TYPE} body holds whole images of {PIXELS} bytes (28x28 uint8 pixels, "
            f"row by row); got {len(body)} bytes"
        )
    _check_count(count, max_images)
    pixels = np.frombuffer(body, dtype=np.uint8)
    return pixels.reshape(count, IMAGE_SIDE, IMAGE_SIDE, 1).astype(np.float32)


def images_from_npy(body: bytes, max_images: int) -> npt.NDArray[np.float32]:
    """A `.npy` file (as `numpy.save` writes it) of shape (N, 28, 28), (N, 784) or (N, 28, 28, 1),
    any integer or float dtype, pixels in 0-255."""
    shape, fortran_order, dtype, offset = _npy_header(body)
    if dtype.kind not in "iuf":
        raise InvalidInput(f".npy dtype {dtype.str} is not a number type; send uint8 or float32")
    if len(shape) < 2 or tuple(shape[1:]) not in (
        (IMAGE_SIDE, IMAGE_SIDE),
        (PIXELS,),
        (IMAGE_SIDE, IMAGE_SIDE, 1),
    ):
        raise InvalidInput(
            f".npy array has shape {shown_shape(tuple(shape))}; images must be {_NPY_SHAPES}"
        )
    count = shape[0]
    if not count:
        raise InvalidInput(".npy array holds no images")
    _check_count(count, max_images)
    expected = math.prod(shape) * dtype.itemsize
    if len(body) - offset != expected:
        raise MalformedRequest(
            f".npy data is {len(body) - offset} bytes; shape {tuple(shape)} of {dtype.str} "
            f"needs {expected}"
        )
    values: npt.NDArray[Any] = np.frombuffer(body, dtype=dtype, offset=offset)
    values = values.reshape(shape, order="F" if fortran_order else "C")
    return check_pixels(values.reshape(count, IMAGE_SIDE, IMAGE_SIDE, 1), "npy")


def _npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise MalformedRequest(
                f".npy format version {version[0]}.{version[1]} is not supported; "
                "numpy.save writes 1.0"
            )
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise MalformedRequest(f"body is not a .npy file: {str(exc)[:120]}") from None
    return shape, fortran_order, dtype, stream.tell()


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise InvalidInput(f"body holds {count} images; at most {max_images} per request")
