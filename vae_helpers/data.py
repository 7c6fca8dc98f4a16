"""MNIST: finding and checking the file, and the pixel transforms the models train on.

Loading returns the arrays of ``keras.datasets.mnist.load_data()`` unchanged
(uint8 pixels ``x`` in 0..255, uint8 labels in 0..9), after checking them.
The transforms map a pixel ``x`` in {0, ..., 255} to a float32 value:

* ``scale``: ``y = x / 255``, in [0, 1].
* ``dequantize``: ``y = (x + u) / 256`` with ``u ~ Uniform[0, 1)``, so ``y`` has a
  density on [0, 1) and ``floor(256 y) = x``. For any density ``p`` on [0, 1)^D,
  ``E_u[log p(y)] - D log 256 <= log P(x)`` with ``P`` the discrete model that ``p``
  induces, so continuous log-likelihoods bound discrete ones (Theis, van den Oord
  & Bethge 2016, "A note on the evaluation of generative models"; Loaiza-Ganem &
  Cunningham 2019, "The continuous Bernoulli").
* ``binarize``: ``y ~ Bernoulli(x / 255)``, in {0, 1}; with a new seed each epoch
  this is dynamic binarization. ``binarized_test_set`` is one fixed draw, so test
  numbers are comparable across runs.

Random transforms take a stateless seed (see ``vae_helpers.seeding``): the same
seed gives the same numbers, eagerly and inside ``tf.function(jit_compile=True)``
alike (both use Philox, named explicitly; see ``_uniform``).
"""

from __future__ import annotations

import os
import socket
import threading
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vae_helpers.backend import tf
from vae_helpers.seeding import SALT_EVAL, SALT_TEST_BINARIZATION, stateless_seed

ENV_VAR = "VAE_MNIST"
KEYS = ("x_train", "y_train", "x_test", "y_test")
N_TRAIN, N_TEST, SIDE = 60000, 10000, 28
_DOWNLOAD_HOST, _DOWNLOAD_PORT, _PROBE_TIMEOUT_S = "storage.googleapis.com", 443, 3.0
_FIX = (
    f"set {ENV_VAR} to the path of mnist.npz (keys x_train, y_train, x_test, y_test "
    "as returned by keras.datasets.mnist.load_data), or pass its path "
    "(load_mnist(path=...); on the command line --data PATH)"
)

DATA_VARIANTS = ("scaled", "dequantized", "binarized")
DATA_VARIANT_DESCRIPTIONS = {
    "scaled": "scaled: pixel/255 in [0, 1]",
    "dequantized": "dequantized: (pixel + u)/256, u ~ U[0,1)",
    "binarized": "binarized: Bernoulli(pixel/255) in {0, 1}",
}
LIKELIHOOD_DATA_VARIANT = {
    "gaussian": "dequantized",
    "continuous_bernoulli": "dequantized",
    "bernoulli": "binarized",
}

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """Missing, unreadable or malformed MNIST data; the message says how to fix it."""


def _fail(what: str) -> DataError:
    return DataError(f"{what}. To fix: {_FIX}.")


def load_mnist(path: str | os.PathLike[str] | None = None) -> Arrays:
    """Load MNIST as ``(x_train, y_train), (x_test, y_test)`` uint8 arrays.

    Sources, first match wins: ``path``; the environment variable ``VAE_MNIST``;
    ``~/.keras/datasets/mnist.npz``; ``keras.datasets.mnist.load_data()`` (a
    download, tried only if the download host answers within a few seconds).
    A ``path`` or ``VAE_MNIST`` naming no file is an error, never skipped.
    The file is only read, never written, moved or locked.

    Args:
        path: an ``.npz`` file with keys x_train, y_train, x_test, y_test.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` with shapes (60000, 28, 28),
        (60000,), (10000, 28, 28), (10000,), all uint8.

    Raises:
        DataError: no data found, or the data found is unreadable or malformed.
    """
    found, source = locate_mnist(path)
    if found is not None:
        return _read_npz(found, source)
    cache = _keras_cache()
    searched = f"the path argument (not given), ${ENV_VAR} (not set), {cache} (no such file)"
    host = f"{_DOWNLOAD_HOST}:{_DOWNLOAD_PORT}"
    if not _download_host_reachable():
        raise _fail(
            f"no MNIST file found locally and the download host {host} is unreachable "
            f"(no network?). Searched: {searched}"
        )
    source = "keras.datasets.mnist.load_data()"
    try:
        (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data()
    except Exception as err:  # any download failure becomes a DataError
        raise _fail(
            f"{source} failed to download {cache} from {host} ({type(err).__name__}: {err}). "
            f"Searched before: {searched}"
        ) from err
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return validate_mnist(arrays, source)


def _keras_cache() -> Path:
    return Path.home() / ".keras" / "datasets" / "mnist.npz"


def locate_mnist(path: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """Where ``load_mnist(path)`` reads from, without reading anything.

    Returns:
        ``(file, source)``: the file and which rule chose it ("the path
        argument", "$VAE_MNIST", "the Keras cache"), or ``(None, ...)`` when
        ``load_mnist`` would fall back to ``keras.datasets.mnist.load_data()``.
    """
    env = os.environ.get(ENV_VAR, "")
    for given, source in ((path, "the path argument"), (env or None, f"${ENV_VAR}")):
        if given is not None:
            return Path(given).expanduser(), source
    cache = _keras_cache()
    if cache.exists():
        return cache, "the Keras cache"
    return None, "keras.datasets.mnist.load_data()"


def _download_host_reachable(
    host: str = _DOWNLOAD_HOST, port: int = _DOWNLOAD_PORT, timeout: float = _PROBE_TIMEOUT_S
) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    DNS resolution can block far longer than any socket timeout, so resolution
    and connection run in a daemon thread that is abandoned after ``timeout``.
    """
    answered: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answered.append(True)
        except Exception:  # any failure means unreachable
            pass

    thread = threading.Thread(target=attempt, name="vae-mnist-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _read_npz(path: Path, source: str) -> Arrays:
    """Read and validate the .npz at ``path`` (named by ``source``), read-only."""
    where = f"{path} (given by {source})"
    if not path.exists():
        raise _fail(f"{where} does not exist")
    if path.is_dir():
        raise _fail(f"{where} is a directory, not an .npz file")
    if path.stat().st_size == 0:
        raise _fail(f"{where} is empty (0 bytes)")
    try:
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise _fail(f"{where} holds one .npy array, not an .npz archive of four")
            with loaded:
                missing = [key for key in KEYS if key not in loaded.files]
                if missing:
                    raise _fail(
                        f"{where} lacks the key(s) {', '.join(missing)} (it has "
                        f"{', '.join(loaded.files) or 'none'})"
                    )
                arrays = {}
                for key in KEYS:
                    try:
                        arrays[key] = loaded[key]
                    except ValueError as err:
                        if "pickle" not in str(err):
                            raise
                        raise _fail(f"{where} stores {key} as a pickled object array") from err
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as err:
        unreadable = f"{where} is not a readable .npz (truncated or corrupt?)"
        raise _fail(f"{unreadable}: {type(err).__name__}: {err}") from err
    return validate_mnist(arrays, where)


def validate_mnist(arrays: Mapping[str, Any], source: str) -> Arrays:
    """Check that ``arrays`` hold MNIST in the exact Keras layout.

    Args:
        arrays: a mapping with keys x_train, y_train, x_test, y_test.
        source: where the arrays came from, quoted in error messages.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` as numpy arrays.

    Raises:
        DataError: a key is missing, or a dtype, shape, length or label is wrong.
    """
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise _fail(f"{source} lacks the key(s) {', '.join(missing)}")
    out = {key: np.asarray(arrays[key]) for key in KEYS}
    for key, value in out.items():
        if value.dtype != np.uint8:
            raise _fail(f"{source}: {key} has dtype {value.dtype}, expected uint8")
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or y.ndim != 1:
            raise _fail(
                f"{source}: x_{split} has shape {x.shape} and y_{split} {y.shape}, "
                f"expected ({n}, {SIDE}, {SIDE}) and ({n},)"
            )
        if len(x) != len(y):
            raise _fail(f"{source}: x_{split} has {len(x)} images but {len(y)} labels")
        if len(x) != n:
            raise _fail(f"{source}: x_{split} has shape {x.shape}, expected ({n}, {SIDE}, {SIDE})")
        if y.size and int(y.max()) > 9:
            raise _fail(f"{source}: y_{split} has label {int(y.max())}, expected 0..9")
    return (out["x_train"], out["y_train"]), (out["x_test"], out["y_test"])


def flatten(images: Any) -> Any:
    """Reshape images ``(..., 28, 28)`` to ``(..., 784)``; numpy in, numpy out.

    Args:
        images: a numpy array or tensor ending in (28, 28), or already in 784.

    Returns:
        The same values with the last two axes merged, of the input's kind.
    """
    shape = tuple(images.shape)
    if shape[-1:] == (SIDE * SIDE,):
        return images
    if shape[-2:] != (SIDE, SIDE):
        raise ValueError(f"flatten expects images ending in ({SIDE}, {SIDE}), got {shape}")
    if isinstance(images, np.ndarray):
        return images.reshape(shape[:-2] + (SIDE * SIDE,))
    return tf.reshape(images, tf.concat([tf.shape(images)[:-2], [SIDE * SIDE]], axis=0))


def _pixels(pixels: Any) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(pixels), tf.float32)


def _uniform(x: tf.Tensor, seed: Any) -> tf.Tensor:
    """Uniform numbers ``k / 2**16`` (k = 0 .. 65535), one per element of ``x``.

    Sixteen random bits per pixel are as fine as the transforms can use: a
    dequantized value ``(pixel + u) / 256`` then lies on a grid of ``2**-24``,
    the spacing of float32 itself just below 1, and a binarization threshold
    is off from ``pixel / 255`` by less than ``2**-16``. Each 32-bit Philox
    draw therefore serves two pixels, which halves the cost of the random
    numbers, a noticeable share of a training step on a CPU. Philox is named
    explicitly: the default ("auto_select") becomes ThreeFry under XLA on CPU,
    about 100 times slower.
    """
    size = tf.size(x)
    bits = tf.random.stateless_uniform(
        [(size + 1) // 2], seed=stateless_seed(seed), minval=None, maxval=None,
        dtype=tf.uint32, alg="philox",
    )
    low = tf.bitwise.bitwise_and(bits, tf.constant(0xFFFF, tf.uint32))
    high = tf.bitwise.right_shift(bits, tf.constant(16, tf.uint32))
    halves = tf.concat([low, high], axis=0)[:size]
    return tf.reshape(tf.cast(halves, tf.float32) * 2.0**-16, tf.shape(x))


def scale(pixels: Any) -> tf.Tensor:
    """``pixels / 255`` as float32 in [0, 1], same shape."""
    return _pixels(pixels) / 255.0


def dequantize(pixels: Any, seed: Any) -> tf.Tensor:
    """Uniform dequantization ``(pixel + u) / 256``, ``u ~ U[0, 1)``, float32 in [0, 1).

    ``u`` takes the values ``k / 2**16``, so ``pixel + u`` (24 significant bits at
    most) is exact in float32 and ``floor(256 * y) == pixel`` holds exactly.
    Cite: Theis et al. 2016; Loaiza-Ganem & Cunningham 2019.

    Args:
        pixels: integer values 0..255, numpy array or tensor, any shape.
        seed: a non-negative int or a shape-[2] integer stateless seed.
    """
    x = _pixels(pixels)
    u = _uniform(x, seed)
    return (x + u) / 256.0


def binarize(pixels: Any, seed: Any) -> tf.Tensor:
    """A Bernoulli draw with probability ``pixel / 255``, as float32 in {0., 1.}.

    Args:
        pixels: values 0..255, numpy array or tensor, any shape.
        seed: a non-negative int or a shape-[2] integer stateless seed; pass a new
            one each epoch for dynamic binarization.
    """
    x = _pixels(pixels)
    u = _uniform(x, seed)
    return tf.cast(u < x / 255.0, tf.float32)


def binarized_test_set(x_test: Any, seed: Any = 0) -> tf.Tensor:
    """One fixed binarization of the test images (``seed`` salted for this purpose)."""
    return binarize(x_test, stateless_seed(seed, SALT_TEST_BINARIZATION))


TEST_SEED = 0
"""The seed of the one fixed transform of the test images (``test_set``)."""


def test_set(pixels: Any, variant: str = "dequantized", seed: int = TEST_SEED) -> tf.Tensor:
    """The test images as every evaluation sees them: ``[N, D]`` float32.

    uint8 pixels (any shape ``[N, ...]``) are transformed once into ``variant`` with
    noise fixed by ``seed`` (binarized: ``binarized_test_set``), so that every run, every
    notebook and the grader measure the same data; float input is used as given.
    """
    if isinstance(pixels, tf.Tensor) and pixels.dtype == tf.float32:
        return tf.reshape(pixels, [tf.shape(pixels)[0], -1])
    x = np.asarray(pixels)
    x = x.reshape(x.shape[0], -1)
    if x.dtype != np.uint8:
        return tf.constant(x, tf.float32)
    if variant == "binarized":
        return tf.reshape(binarized_test_set(x, seed=seed), [x.shape[0], -1])
    return tf.reshape(prepare(x, variant, stateless_seed(seed, SALT_EVAL)), [x.shape[0], -1])


def prepare(pixels: Any, variant: str, seed: Any = None) -> tf.Tensor:
    """Apply the data variant ``variant`` (one of ``DATA_VARIANTS``) to ``pixels``.

    Args:
        pixels: values 0..255, numpy array or tensor, any shape.
        variant: "scaled", "dequantized" or "binarized".
        seed: the stateless seed; required for "dequantized" and "binarized".

    Returns:
        A float32 tensor of the input's shape.

    Raises:
        ValueError: unknown variant, or no seed for a random variant.
    """
    if variant not in DATA_VARIANTS:
        raise ValueError(f"unknown data variant {variant!r}; valid: {', '.join(DATA_VARIANTS)}")
    if variant == "scaled":
        return scale(pixels)
    if seed is None:
        raise ValueError(f"data variant {variant!r} is random and needs a seed")
    return dequantize(pixels, seed) if variant == "dequantized" else binarize(pixels, seed)
