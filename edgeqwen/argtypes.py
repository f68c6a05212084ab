"""argparse types that check a flag's range when the command line is parsed, so a bad value is a
one-line usage error naming the flag, never a traceback from deep inside. Stdlib only."""

from __future__ import annotations

import argparse
from typing import Callable


def _number(kind: type, ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or not ok(value):  # NaN fails every range
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {what}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number > 0")
probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
unit_float = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
penalty = _number(float, lambda v: -2 <= v <= 2, "a number in [-2, 2]")


def int_list(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers, each >= ``minimum`` ("128,512,2048")."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be an integer >= {minimum}")
        return values

    return parse


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def byte_size(text: str) -> int:
    """'8G', '512M', '7.5GiB', '8GB' -> bytes (binary units: what `free -g` and phone specs mean by GB)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 8G or 512M") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: must be > 0")
    return int(value * _UNITS[unit])
