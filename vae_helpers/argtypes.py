"""Argument types for the command lines (``python -m vae_helpers``, ``benchmarks/``).

Each turns a command-line string into a value or raises
``argparse.ArgumentTypeError`` with a one-line message that argparse prefixes
with the option's name.
"""

from __future__ import annotations

import argparse
import math


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0, "a non-negative integer")


def seed_int(text: str) -> int:
    """A random seed: an integer from 0 to 2**62 - 1."""
    value = _int_at_least(text, 0, "an integer from 0 to 2**62 - 1")
    if value > 2**62 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**62 - 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int_list(text: str) -> list[int]:
    """Positive integers separated by commas, such as ``512`` or ``512,256``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas (such as 512 or 512,256), "
            f"got {text!r}")
    return values
