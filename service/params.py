"""Path, query and header values, each kind parsed in one place for every route and protocol.

Python's own parsers are too generous for values a client controls: `str.isdigit()` is true for
"²" and "١٢", which `int()` then rejects or reads as 12; `int()` takes spaces, underscores and
thousands of digits. Here a number is ASCII digits of bounded length, a label a short token, and
whatever is echoed back in an error message is cut short.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.errors import InvalidInput, MalformedRequest, ModelNotFound

MAX_VERSION_DIGITS = 18
"""Versions are int64 in TensorFlow Serving; 18 digits always fit."""
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
_DECIMAL = re.compile(r"[0-9]+")
_LABEL = re.compile(LABEL_PATTERN)


def shown(value: object, limit: int = 40) -> str:
    """A client's value quoted for an error message, cut to `limit` characters."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def shown_shape(shape: Sequence[int], limit: int = 8) -> str:
    """A client's tensor shape for an error message (a tuple as a tuple): up to `limit`
    dimensions, then how many it has. Echoed whole, a shape of 100,000 dimensions made a 300 KB
    gRPC status message, which the client's own library refused (RESOURCE_EXHAUSTED, not the
    INVALID_ARGUMENT sent)."""
    if len(shape) <= limit:
        return str(shape if isinstance(shape, tuple) else list(shape))
    opening, closing = "()" if isinstance(shape, tuple) else "[]"
    first = ", ".join(str(d) for d in shape[:limit])
    return f"{opening}{first}, ... {len(shape)} dimensions{closing}"


def parse_decimal(text: str, max_digits: int) -> int | None:
    """A non-negative ASCII decimal of at most `max_digits` digits, else None."""
    if len(text) > max_digits or not _DECIMAL.fullmatch(text):
        return None
    return int(text)


def parse_version(text: str, *, in_path: bool = True) -> int:
    """A model version: a positive ASCII decimal. In a path, anything else names no resource
    (404, as TF Serving and Triton answer); in a query or body it is an invalid argument."""
    version = parse_decimal(text, MAX_VERSION_DIGITS)
    if version is not None and version > 0:
        return version
    message = f"model version {shown(text)} is not a version number (a positive integer)"
    raise ModelNotFound(message) if in_path else InvalidInput(message)


def parse_label(text: str, *, in_path: bool = True) -> str:
    """A version label: letters, digits, `_`, `.` and `-`, at most 63, starting alphanumeric."""
    if _LABEL.fullmatch(text):
        return text
    message = (
        f"label {shown(text)} is not a label name (letters, digits, '_', '.', '-'; "
        "at most 63, starting with a letter or digit)"
    )
    raise ModelNotFound(message) if in_path else InvalidInput(message)


TIMEOUT_HEADER = "x-request-timeout-ms"
"""A client's own time budget in milliseconds; the server's `request_timeout_ms` caps it."""


def parse_timeout_ms(value: str) -> int | None:
    """The `X-Request-Timeout-Ms` value: positive whole milliseconds, else None."""
    return parse_decimal(value.strip(), 9) or None


def parse_length_header(name: str, value: str) -> int:
    """A byte count from a header such as Content-Length; 400 when it is not one."""
    length = parse_decimal(value.strip(), MAX_VERSION_DIGITS)
    if length is None:
        raise MalformedRequest(f"invalid {name} header {shown(value)}")
    return length
