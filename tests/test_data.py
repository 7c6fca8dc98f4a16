"""Tests of vae_helpers.data: finding, checking and transforming MNIST.

Everything runs on small synthetic .npz files made in tmp_path, except the
tests marked as needing the real file, which read it only through the
VAE_MNIST environment variable and skip when it is unset.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from vae_helpers import data
from vae_helpers.backend import tf
from vae_helpers.data import DataError
from vae_helpers.seeding import SALT_TEST_BINARIZATION, stateless_seed

pytestmark = pytest.mark.unit

FIX_HINT = "set VAE_MNIST to the path of mnist.npz"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- helpers and fixtures --------------------------------------------------------------------


def keras_arrays(marker: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the exact Keras layout; ``marker`` is stored in x_test[0, 0, 0]."""
    arrays = {
        "x_train": np.zeros((60000, 28, 28), np.uint8),
        "y_train": (np.arange(60000) % 10).astype(np.uint8),
        "x_test": np.zeros((10000, 28, 28), np.uint8),
        "y_test": (np.arange(10000) % 10).astype(np.uint8),
    }
    arrays["x_train"][:, 5:9, 5:9] = 255
    arrays["x_test"][0, 0, 0] = marker
    return arrays


def write_npz(path: Path, marker: int = 0, **changes) -> Path:
    """Write a compressed Keras-layout .npz; a change of ``None`` drops that key."""
    arrays = keras_arrays(marker)
    arrays.update(changes)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def marker_of(loaded) -> int:
    return int(loaded[1][0][0, 0, 0])


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No VAE_MNIST, an empty home directory, an unreachable download host and a
    keras download that records calls (and fails if called)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("VAE_MNIST", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: False)
    calls = []

    def fake_load_data(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("keras download must not be called")

    monkeypatch.setattr(tf.keras.datasets.mnist, "load_data", fake_load_data)
    return {"home": home, "cache": home / ".keras" / "datasets" / "mnist.npz", "calls": calls}


def assert_helpful(err: DataError, path, *fragments: str) -> None:
    message = str(err)
    assert str(path) in message, message
    assert FIX_HINT in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- where the data comes from ---------------------------------------------------------------


def test_precedence_path_env_cache_download(tmp_path, isolated, monkeypatch):
    arg = write_npz(tmp_path / "arg.npz", marker=1)
    env = write_npz(tmp_path / "env.npz", marker=2)
    isolated["cache"].parent.mkdir(parents=True)
    write_npz(isolated["cache"], marker=3)
    monkeypatch.setenv("VAE_MNIST", str(env))
    assert marker_of(data.load_mnist(arg)) == 1
    assert marker_of(data.load_mnist(str(arg))) == 1
    assert marker_of(data.load_mnist()) == 2
    monkeypatch.delenv("VAE_MNIST")
    assert marker_of(data.load_mnist()) == 3
    assert Path.home() == isolated["home"]
    isolated["cache"].unlink()
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        data.load_mnist()
    assert time.monotonic() - start < 10
    assert_helpful(info.value, isolated["cache"], "storage.googleapis.com", "VAE_MNIST (not set)")
    assert isolated["calls"] == []


def test_download_used_when_reachable(isolated, monkeypatch):
    arrays = keras_arrays(marker=4)
    monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(
        tf.keras.datasets.mnist,
        "load_data",
        lambda: ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])),
    )
    assert marker_of(data.load_mnist()) == 4


def test_download_failure_becomes_data_error(isolated, monkeypatch):
    def broken():
        raise OSError("connection reset")

    monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(tf.keras.datasets.mnist, "load_data", broken)
    with pytest.raises(DataError) as info:
        data.load_mnist()
    assert_helpful(info.value, isolated["cache"], "connection reset")


def test_missing_path_argument_does_not_fall_through(tmp_path, isolated, monkeypatch):
    monkeypatch.setenv("VAE_MNIST", str(write_npz(tmp_path / "good.npz")))
    missing = tmp_path / "nope" / "mnist.npz"
    with pytest.raises(DataError) as info:
        data.load_mnist(missing)
    assert_helpful(info.value, missing, "path argument", "does not exist")


def test_missing_env_file_does_not_fall_through(tmp_path, isolated, monkeypatch):
    isolated["cache"].parent.mkdir(parents=True)
    write_npz(isolated["cache"])
    missing = tmp_path / "missing.npz"
    monkeypatch.setenv("VAE_MNIST", str(missing))
    with pytest.raises(DataError) as info:
        data.load_mnist()
    assert_helpful(info.value, missing, "$VAE_MNIST", "does not exist")


def test_probe_unreachable_is_bounded():
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routable.
    start = time.monotonic()
    assert data._download_host_reachable("192.0.2.1", 443, timeout=0.5) is False
    assert time.monotonic() - start < 3


def test_probe_reachable_local_server():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert data._download_host_reachable("127.0.0.1", port, timeout=2.0) is True


# --- bad files -------------------------------------------------------------------------------


@cache
def _valid_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **keras_arrays())
    return buffer.getvalue()


def _corrupt_middle(raw: bytes) -> bytes:
    middle = bytearray(raw)
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        middle[i] ^= 0xFF
    return bytes(middle)


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, np.uint8))
    return buffer.getvalue()


def _object_array_file(path: Path) -> None:
    arrays = keras_arrays()
    arrays["y_test"] = np.array([{"label": i} for i in range(10000)], dtype=object)
    np.savez(path, **arrays)


BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "truncated_half": (
        lambda p: p.write_bytes(_valid_bytes()[: len(_valid_bytes()) // 2]),
        "not a readable .npz",
    ),
    "truncated_tail": (lambda p: p.write_bytes(_valid_bytes()[:-10]), "not a readable .npz"),
    "corrupt_middle": (
        lambda p: p.write_bytes(_corrupt_middle(_valid_bytes())),
        "not a readable .npz",
    ),
    "garbage": (
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
        "not a readable .npz",
    ),
    "single_npy": (lambda p: p.write_bytes(_npy_bytes()), "one .npy array"),
    "missing_key": (lambda p: write_npz(p, x_test=None), "x_test"),
    "wrong_image_shape": (
        lambda p: write_npz(p, x_train=np.zeros((60000, 28, 27), np.uint8)),
        "(60000, 28, 27)",
    ),
    "wrong_count": (
        lambda p: write_npz(
            p, x_test=np.zeros((9999, 28, 28), np.uint8), y_test=np.zeros(9999, np.uint8)
        ),
        "(10000, 28, 28)",
    ),
    "float32_images": (
        lambda p: write_npz(p, x_train=np.zeros((60000, 28, 28), np.float32)),
        "float32",
    ),
    "int64_labels": (lambda p: write_npz(p, y_train=np.zeros(60000, np.int64)), "int64"),
    "label_10": (lambda p: write_npz(p, y_test=np.full(10000, 10, np.uint8)), "label 10"),
    "label_255": (lambda p: write_npz(p, y_train=np.full(60000, 255, np.uint8)), "label 255"),
    "length_mismatch": (
        lambda p: write_npz(p, y_train=np.zeros(59999, np.uint8)),
        "but 59999 labels",
    ),
    "object_array": (_object_array_file, "pickled object array"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_raises_and_is_left_unchanged(case, tmp_path, isolated):
    make, fragment = BAD_FILES[case]
    path = tmp_path / "mnist.npz"
    make(path)
    before = fingerprint(path)
    with pytest.raises(DataError) as info:
        data.load_mnist(path)
    assert_helpful(info.value, path, fragment)
    assert fingerprint(path) == before


def test_directory_instead_of_file(tmp_path, isolated):
    with pytest.raises(DataError) as info:
        data.load_mnist(tmp_path)
    assert_helpful(info.value, tmp_path, "is a directory")


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_validate_mnist_names_source():
    arrays = keras_arrays()
    arrays["y_test"] = arrays["y_test"].astype(np.int32)
    with pytest.raises(DataError) as info:
        data.validate_mnist(arrays, "my-source")
    assert_helpful(info.value, "my-source", "int32", "uint8")


def test_good_file_loads_exactly_and_is_left_unchanged(tmp_path, isolated):
    path = write_npz(tmp_path / "mnist.npz", marker=7)
    before = fingerprint(path)
    (x_train, y_train), (x_test, y_test) = data.load_mnist(path)
    reference = keras_arrays(marker=7)
    for got, key in (
        (x_train, "x_train"),
        (y_train, "y_train"),
        (x_test, "x_test"),
        (y_test, "y_test"),
    ):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, reference[key])
    x_train[:] = 1  # the result is a private copy: writable, not tied to the file
    assert fingerprint(path) == before


# --- the real file (only through VAE_MNIST) --------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist():
    path = os.environ.get("VAE_MNIST")
    if not path:
        pytest.skip("VAE_MNIST is not set: point it at the real mnist.npz to run this test")
    before = fingerprint(Path(path))
    loaded = data.load_mnist(path)
    assert fingerprint(Path(path)) == before
    return loaded


def test_real_shapes_and_dtypes(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}


def test_real_class_counts(real_mnist):
    (_, y_train), (_, y_test) = real_mnist
    assert np.bincount(y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(y_test, minlength=10).tolist() == TEST_COUNTS


def test_real_pixel_mean(real_mnist):
    (x_train, _), _ = real_mnist
    assert float(np.mean(x_train / 255.0)) == pytest.approx(0.1307, abs=1e-3)


def test_real_test_set_binarization(real_mnist):
    _, (x_test, _) = real_mnist
    binary = data.binarized_test_set(x_test).numpy()
    assert binary.shape == x_test.shape
    assert float(binary.mean()) == pytest.approx(float(np.mean(x_test / 255.0)), abs=2e-3)


# --- transforms ------------------------------------------------------------------------------

LEVELS = np.tile(np.arange(256, dtype=np.uint8), 4096)  # every pixel value, 4096 times


def test_flatten():
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28).astype(np.uint8)
    flat = data.flatten(images)
    assert isinstance(flat, np.ndarray) and flat.shape == (3, 784)
    np.testing.assert_array_equal(flat[1], images[1].ravel())
    assert data.flatten(flat) is flat
    flat_tensor = data.flatten(tf.constant(images))
    np.testing.assert_array_equal(flat_tensor.numpy(), flat)
    with pytest.raises(ValueError, match="28"):
        data.flatten(np.zeros((3, 27, 28)))


def test_scale_values():
    y = data.scale(np.arange(256, dtype=np.uint8))
    assert y.dtype == tf.float32
    np.testing.assert_allclose(y.numpy(), np.arange(256) / 255.0, rtol=0, atol=1e-7)
    assert y.numpy()[0] == 0.0 and y.numpy()[255] == 1.0
    for shape in [(2, 28, 28), (2, 784)]:
        assert data.scale(np.full(shape, 255, np.uint8)).shape == shape


def test_dequantize_properties():
    y = data.dequantize(LEVELS, seed=3).numpy()
    assert y.dtype == np.float32 and y.shape == LEVELS.shape
    assert y.min() >= 0.0 and y.max() < 1.0
    np.testing.assert_array_equal(np.floor(256.0 * y.astype(np.float64)), LEVELS)
    noise = 256.0 * y.astype(np.float64) - LEVELS
    assert noise.mean() == pytest.approx(0.5, abs=0.005)
    histogram = np.histogram(noise, bins=10, range=(0.0, 1.0))[0] / noise.size
    np.testing.assert_allclose(histogram, 0.1, atol=0.005)


def test_dequantize_top_pixel_stays_below_one():
    # A continuous u > 1 - 2**-17 would make float32(255 + u) round up to 256; u on the
    # 2**-16 grid cannot. 2**21 draws reach the top of the grid (u = 1 - 2**-16) often.
    y = data.dequantize(np.full(2**21, 255, np.uint8), seed=1).numpy()
    assert y.max() == np.float32((255 + 1 - 2**-16) / 256)
    assert y.max() < 1.0
    assert np.all(np.floor(256.0 * y.astype(np.float64)) == 255)


def test_dequantize_seeds():
    x = np.full((4, 28, 28), 100, np.uint8)
    same = data.dequantize(x, 5).numpy()
    np.testing.assert_array_equal(same, data.dequantize(x, 5).numpy())
    np.testing.assert_array_equal(same, data.dequantize(tf.constant(x), stateless_seed(5)).numpy())
    assert not np.array_equal(same, data.dequantize(x, 6).numpy())
    assert not np.array_equal(same, data.dequantize(x, tf.constant([5, 1])).numpy())


def test_binarize_probability():
    y = data.binarize(np.full(100_000, 128, np.uint8), seed=0).numpy()
    assert y.dtype == np.float32
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    assert y.mean() == pytest.approx(128 / 255, abs=0.01)
    per_level = data.binarize(LEVELS, seed=2).numpy().reshape(4096, 256).mean(axis=0)
    np.testing.assert_allclose(per_level, np.arange(256) / 255.0, atol=0.05)


def test_binarize_extremes_and_seeds():
    assert float(tf.reduce_max(data.binarize(np.zeros((50, 784), np.uint8), 0))) == 0.0
    assert float(tf.reduce_min(data.binarize(np.full((50, 784), 255, np.uint8), 0))) == 1.0
    x = np.full((8, 784), 128, np.uint8)
    np.testing.assert_array_equal(data.binarize(x, 9).numpy(), data.binarize(x, 9).numpy())
    assert not np.array_equal(data.binarize(x, 9).numpy(), data.binarize(x, 10).numpy())


def test_binarized_test_set_is_fixed_and_salted():
    x = np.tile(np.arange(256, dtype=np.uint8), 49).reshape(16, 28, 28)
    first = data.binarized_test_set(x).numpy()
    np.testing.assert_array_equal(first, data.binarized_test_set(x, seed=0).numpy())
    salted = data.binarize(x, stateless_seed(0, SALT_TEST_BINARIZATION)).numpy()
    np.testing.assert_array_equal(first, salted)
    assert not np.array_equal(first, data.binarized_test_set(x, seed=1).numpy())


def test_prepare_variants_and_tables():
    x = np.arange(256, dtype=np.uint8).reshape(1, 256)
    np.testing.assert_array_equal(data.prepare(x, "scaled").numpy(), data.scale(x).numpy())
    np.testing.assert_array_equal(
        data.prepare(x, "dequantized", 4).numpy(), data.dequantize(x, 4).numpy()
    )
    np.testing.assert_array_equal(
        data.prepare(x, "binarized", 4).numpy(), data.binarize(x, 4).numpy()
    )
    assert set(data.DATA_VARIANTS) == {"scaled", "dequantized", "binarized"}
    assert set(data.DATA_VARIANT_DESCRIPTIONS) == set(data.DATA_VARIANTS)
    assert set(data.LIKELIHOOD_DATA_VARIANT.values()) <= set(data.DATA_VARIANTS)
    assert data.LIKELIHOOD_DATA_VARIANT["bernoulli"] == "binarized"


def test_prepare_errors():
    with pytest.raises(ValueError) as info:
        data.prepare(np.zeros(3, np.uint8), "binary")
    for name in data.DATA_VARIANTS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="seed"):
        data.prepare(np.zeros(3, np.uint8), "binarized")


@pytest.mark.parametrize("variant", ["scaled", "dequantized", "binarized"])
def test_transforms_under_xla(variant):
    x = tf.constant(np.tile(np.arange(256, dtype=np.uint8), 49).reshape(16, 28, 28))

    @tf.function(jit_compile=True)
    def step(pixels, seed):
        return data.flatten(data.prepare(pixels, variant, seed))

    y = step(x, tf.constant([3, 4], tf.int32))
    assert y.shape == (16, 784) and y.dtype == tf.float32
    np.testing.assert_array_equal(y.numpy(), step(x, tf.constant([3, 4], tf.int32)).numpy())
    # Compiled and eager execution draw the same random numbers for the same seed
    # (XLA may round the arithmetic of "scaled" differently, by one ulp).
    eager = data.flatten(data.prepare(x, variant, tf.constant([3, 4], tf.int32)))
    if variant == "scaled":
        np.testing.assert_allclose(y.numpy(), eager.numpy(), rtol=1e-6)
    else:
        np.testing.assert_array_equal(y.numpy(), eager.numpy())
    values = y.numpy()
    pixels = data.flatten(x.numpy()).astype(np.float64)
    if variant == "scaled":
        np.testing.assert_allclose(values, pixels / 255.0, atol=1e-7)
    elif variant == "dequantized":
        np.testing.assert_array_equal(np.floor(256.0 * values.astype(np.float64)), pixels)
    else:
        assert set(np.unique(values).tolist()) <= {0.0, 1.0}
        assert np.all(values[pixels == 0] == 0) and np.all(values[pixels == 255] == 1)


def test_keras_cache_corrupt_is_reported_not_skipped(isolated):
    isolated["cache"].parent.mkdir(parents=True)
    isolated["cache"].write_bytes(b"not an npz")
    with pytest.raises(DataError) as info:
        data.load_mnist()
    assert_helpful(info.value, isolated["cache"], "not a readable .npz")
    assert isolated["calls"] == []


def test_locate_mnist_follows_the_documented_order(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setattr(data.Path, "home", classmethod(lambda cls: home))
    monkeypatch.delenv("VAE_MNIST", raising=False)
    assert data.locate_mnist() == (None, "keras.datasets.mnist.load_data()")
    cache = home / ".keras" / "datasets" / "mnist.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"")
    assert data.locate_mnist() == (cache, "the Keras cache")
    monkeypatch.setenv("VAE_MNIST", str(tmp_path / "env.npz"))
    assert data.locate_mnist() == (tmp_path / "env.npz", "$VAE_MNIST")
    assert data.locate_mnist(tmp_path / "arg.npz") == (tmp_path / "arg.npz", "the path argument")
