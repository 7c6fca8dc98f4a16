"""The machinery of the visible checks: one PASS/FAIL line per task, student errors
caught and named (``vae_helpers.course.checks`` explains the checks themselves)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Failed(Exception):
    """A check's verdict: the message is the hint printed after ``FAIL``."""


def line(task: str, ok: bool, message: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {task}: {message}")
    return ok


def run(task: str, body: Callable[[], str]) -> bool:
    try:
        return line(task, True, body())
    except NotImplementedError:
        raise
    except Failed as failed:
        return line(task, False, str(failed))


def call(task_fn: Callable, *args, **kwargs):
    """Call the student's code; any error but ``NotImplementedError`` becomes a FAIL."""
    try:
        return task_fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as err:  # the student's code may raise anything
        name = getattr(task_fn, "__qualname__", getattr(task_fn, "__name__", "the code"))
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise Failed(f"{name} raised {type(err).__name__}" + (f": {first}" if first else "")
                      ) from None


def as_array(value, what: str, shape=None) -> np.ndarray:
    try:
        array = np.asarray(getattr(value, "numpy", lambda: value)(), np.float64)
    except (TypeError, ValueError) as err:
        raise Failed(f"{what} is not numeric ({type(value).__name__}: {err})") from None
    if shape is not None and array.shape != tuple(shape):
        raise Failed(f"{what} has shape {list(array.shape)}, expected {list(shape)}")
    if not np.all(np.isfinite(array)):
        raise Failed(f"{what} holds NaN or infinite values")
    return array


def close(value, reference, rtol: float, atol: float = 0.0) -> bool:
    return bool(np.all(np.abs(np.asarray(value) - reference) <= atol + rtol * np.abs(reference)))


def images(rng, n: int, input_dim: int = 784) -> np.ndarray:
    """``n`` digit-like test inputs in (0, 1): a few smooth strokes, dequantization noise."""
    side = int(round(np.sqrt(input_dim)))
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    images = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
        ring = np.exp(-((np.hypot(xx - cx, yy - cy) - r) ** 2) / 0.004)
        images.append(np.clip(ring.ravel()[:input_dim] + rng.uniform(0, 1 / 256, input_dim),
                              0.0, 0.999))
    return np.asarray(images, np.float32)
