"""Seeds: one explicit call for a notebook, stateless seeds for the library.

Randomness inside the library never depends on hidden global state: every random
draw takes a *stateless* seed, a pair of int32 built from the user's integer seed
and "salt" integers (the epoch, the step, the purpose of the draw). Two runs with
the same seed therefore draw the same numbers, and a run resumed from a
checkpoint at epoch ``e`` draws exactly what an uninterrupted run draws from
epoch ``e`` on.

``set_seed`` is for the code around the library (notebooks, scripts): it seeds
Python, NumPy and TensorFlow's global generator and turns on TensorFlow's op
determinism. Importing the package never calls it.
"""

from __future__ import annotations

import random

import numpy as np

from vae_helpers.backend import tf

# Salts that separate the purposes of random draws made from one user seed.
SALT_INIT = 1
SALT_SHUFFLE = 2
SALT_DATA = 3
SALT_LATENT = 4
SALT_EVAL = 5
SALT_TEST_BINARIZATION = 6


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow ops deterministic.

    Args:
        seed: any non-negative integer.
        deterministic: also call ``tf.config.experimental.enable_op_determinism``.
    """
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    tf.random.set_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


MAX_SEED = 2**62 - 1  # the largest seed that two int32 words hold without wrapping


def _check_seed(seed) -> int:
    if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
            or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer from 0 to 2**62 - 1, got {seed!r}")
    return int(seed)


def stateless_seed(seed, *salt) -> tf.Tensor:
    """A stateless seed (shape ``[2]``, int32) derived from ``seed`` and ``salt``.

    Args:
        seed: a non-negative Python integer, or a shape-``[2]`` integer tensor
            (already a stateless seed).
        *salt: integers or scalar integer tensors folded in one after another.

    Returns:
        A ``tf.Tensor`` of shape ``[2]`` and dtype int32, usable as the ``seed``
        of ``tf.random.stateless_*`` ops and of TFP samplers.
    """
    if isinstance(seed, (int, float, np.integer, np.floating)):  # bool is an int too
        seed = _check_seed(seed)
        base = tf.constant([seed % 2**31, seed // 2**31], dtype=tf.int32)
    else:
        seed = tf.convert_to_tensor(seed)
        if not seed.dtype.is_integer or seed.shape.num_elements() != 2:
            raise ValueError("a seed is an integer from 0 to 2**62 - 1 or a stateless seed "
                             f"(2 integers), got {seed.dtype.name} of shape {seed.shape}")
        base = tf.cast(tf.reshape(seed, [2]), tf.int32)
    for s in salt:
        base = tf.random.experimental.stateless_fold_in(base, tf.cast(s, tf.int64))
        base = tf.cast(base, tf.int32)
    return base
