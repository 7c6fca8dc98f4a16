"""Shared fixtures: a synthetic MNIST file in the exact Keras layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_TRAIN, N_TEST, SIDE = 60000, 10000, 28


def make_fake_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    """Keras-layout MNIST arrays: each label a fixed random template of 0/255 blobs, plus noise.

    Images of one label share their template, so a model has something to learn,
    and differ by noise, so no two images are equal.
    """
    rng = np.random.default_rng(seed)
    # Ten templates: a coarse 7x7 random mask, upsampled to 28x28 blobs of 4x4 pixels.
    coarse = rng.random((10, 7, 7)) < 0.35
    templates = np.kron(coarse, np.ones((4, 4), dtype=bool))  # (10, 28, 28)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        noise = rng.integers(0, 64, size=(n, SIDE, SIDE), dtype=np.uint8)
        on = templates[labels]
        arrays[f"x_{split}"] = np.where(on, np.uint8(255) - noise, noise).astype(np.uint8)
        arrays[f"y_{split}"] = labels
    return arrays


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    """Path of a synthetic mnist.npz (x_train (60000, 28, 28), ..., all uint8)."""
    path = tmp_path_factory.mktemp("fake_mnist") / "mnist.npz"
    np.savez(path, **make_fake_mnist())
    return path


@pytest.fixture(scope="session")
def blob_digits():
    """``make(templates, density, noise)``: 1280 synthetic uint8 "digits" [1280, 28, 28] and
    their labels, each a random blob template (``density`` of its pixels on) plus noise."""
    def make(templates: int, density: float, noise: int, n: int = 1280, seed: int = 0):
        rng = np.random.default_rng(seed)
        masks = (rng.uniform(size=(templates, SIDE, SIDE)) < density) * 255
        labels = rng.integers(0, templates, size=n)
        images = np.clip(masks[labels] + rng.integers(0, noise, size=(n, SIDE, SIDE)), 0, 255)
        return images.astype(np.uint8), labels
    return make
