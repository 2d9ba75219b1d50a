"""Request JSON with its pixel arrays parsed straight into numpy, for the bodies that allow it.

Parsing 32 images of 784 numbers with orjson builds 25,000 Python ints, and numpy then walks
them again: about 0.9 ms, as much as a tenth of the request's model time. simdjson parses the
body without building Python objects and copies a numeric array out as one float64 buffer
(about 0.2 ms). The catch is that simdjson flattens nested arrays without looking at their
shape, so this module proves the array regular before trusting it: the length of every image and
row is checked, and the number of `[` in the body must equal the number of arrays the parsed
document explains (an extra list hidden among the pixels would add one).

This is a fast path only. Any body it cannot prove (invalid JSON, NaN, booleans, ragged or deeper
arrays, duplicate keys, pixels outside 0-255, a `[` inside a string) goes to the standard parser,
so every error message still comes from one place (service/decoding.py).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import simdjson

# A path names where a pixel array sits: object keys, with "*" for every item of a list.
Path = tuple[str, ...]

# Deeper blocks (28x28x1 images) need a length check per pixel, which costs more than it saves.
_MAX_BLOCK_DEPTH = 3
# Beyond the blocks, a request holds a few small values; a large list elsewhere is not ours.
_MAX_OTHER_LIST = 64

_local = threading.local()


class _Unproven(Exception):
    """The body is outside what the fast path can prove; the standard parser decides."""


def parse_with_blocks(body: bytes, blocks: frozenset[Path]) -> Any | None:
    """The parsed body with the arrays at `blocks` as float64 ndarrays, or None (not proven).

    Other values come back as orjson would give them (dicts, lists, str, int, float, None).
    """
    try:
        walk = _Walk(blocks)
        value = walk.convert(_parser().parse(body), ())
    except (_Unproven, ValueError, TypeError, RuntimeError, IndexError, KeyError):
        # RuntimeError covers simdjson's "parser still referenced" and big integers; the
        # document proxies die with this frame, so the thread's parser is free again.
        return None
    if body.count(b"[") != walk.arrays:
        return None
    return value


def _parser() -> simdjson.Parser:
    """One parser per thread: a parser may hold only one document at a time."""
    parser: simdjson.Parser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


class _Walk:
    """Converts a parsed document, counting every array it accounts for."""

    def __init__(self, blocks: frozenset[Path]) -> None:
        self.blocks = blocks
        self.arrays = 0

    def convert(self, node: Any, path: Path) -> Any:
        if isinstance(node, simdjson.Object):
            keys = list(node.keys())
            if len(set(keys)) != len(keys):  # orjson keeps the last, simdjson finds the first
                raise _Unproven
            if not self._leads_to_block(path):
                return self._plain(node.as_dict())
            return {key: self.convert(node[key], (*path, key)) for key in keys}
        if isinstance(node, simdjson.Array):
            if path in self.blocks:
                return self._block(node)
            if len(node) > _MAX_OTHER_LIST:
                raise _Unproven
            if not self._leads_to_block((*path, "*")):
                return self._plain(node.as_list())
            self.arrays += 1
            return [self.convert(item, (*path, "*")) for item in node]
        return node

    def _leads_to_block(self, path: Path) -> bool:
        return any(block[: len(path)] == path and len(block) > len(path) for block in self.blocks)

    def _plain(self, value: Any) -> Any:
        """A subtree without blocks, already converted; only its lists need counting."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                if len(item) > _MAX_OTHER_LIST:
                    raise _Unproven
                self.arrays += 1
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
        return value

    def _block(self, array: simdjson.Array) -> np.ndarray[Any, np.dtype[np.float64]]:
        shape = [len(array)]
        probe = array
        while shape[-1] and isinstance(probe := probe[0], simdjson.Array):
            shape.append(len(probe))
        if 0 in shape or len(shape) > _MAX_BLOCK_DEPTH:
            raise _Unproven
        if len(shape) > 1:
            for image in array:
                if not isinstance(image, simdjson.Array) or len(image) != shape[1]:
                    raise _Unproven
                if len(shape) > 2:
                    for row in image:
                        if not isinstance(row, simdjson.Array) or len(row) != shape[2]:
                            raise _Unproven
        # Arrays at every level but the numbers': with the count of `[` this proves no list
        # hides among the numbers (simdjson's buffer would flatten it silently).
        self.arrays += sum(math.prod(shape[:level]) for level in range(len(shape)))
        values = np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
        if values.size != math.prod(shape):
            raise _Unproven
        if values.min() < 0 or values.max() > 255:  # the standard path words the error
            raise _Unproven
        return values.reshape(shape)
