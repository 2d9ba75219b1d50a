"""`python tests/parse_only.py SCRIPT ARGS...`: runs SCRIPT as `__main__` only until it has
parsed its arguments, then exits 0. The README test uses it for the benchmark commands, which
take minutes to hours: it proves each script starts and accepts every flag the README gives."""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from typing import Any

_parse_args = argparse.ArgumentParser.parse_args


def _parse_then_stop(
    self: argparse.ArgumentParser, args: Sequence[str] | None = None, namespace: Any = None
) -> argparse.Namespace:
    _parse_args(self, args, namespace)  # exits 2 with the parser's message on a bad flag
    raise SystemExit(0)


if __name__ == "__main__":
    argparse.ArgumentParser.parse_args = _parse_then_stop  # type: ignore[assignment,method-assign]
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
