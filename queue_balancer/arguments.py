"""Argument types for the command line: a bad number is one line of usage error, never a traceback.

``argparse`` turns the ``ArgumentTypeError`` these raise into ``error: argument --x: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def seconds(text: str) -> float:
    """A finite, positive number of seconds (``nan``, ``inf`` and ``1e999`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text}")
    return value


PORT = integer(1, 65535)
POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
"""The usage error of a bad value is argparse's: the usage line, the error line, exit status 2."""
