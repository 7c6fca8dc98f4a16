r"""Evaluation: the test ELBO, the importance-weighted log-likelihood, bits per dimension.

ELBO
    :math:`\mathcal L(x) = \mathbb E_{q(z\mid x)}[\log p(x\mid z)] - \mathrm{KL}(q\,\|\,p)`,
    estimated with *sampled* z. Decoding the posterior mean instead gives a
    different number that is not a bound on anything.

IWAE bound (Burda, Grosse & Salakhutdinov, 2016, eq. 8)
    .. math::

        \mathcal L_k(x) = \mathbb E_{z_1..z_k \sim q}\Big[\log \frac1k \sum_{i=1}^k
            \frac{p(x \mid z_i)\, p(z_i)}{q(z_i \mid x)}\Big],

    with :math:`\mathcal L = \mathcal L_1 \le \mathcal L_k \le \mathcal L_{k'}
    \le \log p(x)` for :math:`k < k'`, and :math:`\mathcal L_k \to \log p(x)` as
    :math:`k \to \infty`. With k = 5000 it is the standard estimate of the test
    log-likelihood. The k log-weights of an image are processed in chunks with a
    running log-sum-exp, so memory stays bounded whatever k is.

Bits per dimension
    For a density on dequantized pixels :math:`y = (\text{pixel} + u)/256` in
    :math:`[0,1)^D`, the density of :math:`256\,y` is :math:`p(y)/256^D`, and by
    Jensen's inequality the 8-bit data's probability is at least
    :math:`\exp \mathbb E_u[\log p(y) - D \log 256]` (Theis, van den Oord &
    Bethge, 2016). So :math:`-(\log p(y) - D\log 256)/(D \log 2)` bounds the
    bits per dimension of the discrete data from above.
"""

from __future__ import annotations

import math

import numpy as np

from vae_helpers import data as data_lib
from vae_helpers._tf import tf
from vae_helpers.progress import progress_bar
from vae_helpers.seeding import SALT_EVAL, stateless_seed

#: Data variants on which a likelihood is a continuous density of dequantized pixels.
DEQUANTIZED = "dequantized"

#: The seed of the one fixed transform of the test set (its dequantization noise or
#: its binarization). It does not depend on a run's training seed, so every run's
#: test numbers are computed on the same data.
TEST_SEED = 0


def prepare_eval_data(x, variant: str, seed: int = TEST_SEED) -> tf.Tensor:
    """One fixed transform of evaluation pixels into ``variant`` (float ``[N, D]``).

    uint8 pixels are transformed once with ``seed`` (binarized:
    ``data.binarized_test_set``); with the default ``TEST_SEED`` every run and
    every evaluation sees the same data. Float input is used as given.
    """
    if isinstance(x, tf.Tensor) and x.dtype == tf.float32:
        return tf.reshape(x, [tf.shape(x)[0], -1])
    x = np.asarray(x)
    x = x.reshape(x.shape[0], -1)
    if x.dtype != np.uint8:
        return tf.constant(x, tf.float32)
    if variant == "binarized":
        return tf.reshape(data_lib.binarized_test_set(x, seed=seed), [x.shape[0], -1])
    return tf.reshape(data_lib.prepare(x, variant, stateless_seed(seed, SALT_EVAL)),
                      [x.shape[0], -1])


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def evaluate_elbo(model, x, n_samples: int = 1, batch_size: int = 2000, seed: int = 0,
                  per_example: bool = False) -> dict:
    """Mean (or per-image) ELBO, reconstruction term and KL over ``x``.

    Args:
        model: a VAE.
        x: float data ``[N, D]`` already in the likelihood's variant (see
            ``prepare_eval_data``).
        n_samples: z samples per image.
        batch_size: images per compiled call.
        seed: seeds the z samples.
        per_example: return arrays ``[N]`` instead of means.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    step = _compiled(model, "_elbo_fn", lambda: tf.function(
        lambda xb, s, k: model.elbo_terms(xb, k, seed=s), jit_compile=True))
    parts = [[], [], []]
    for i, (a, b) in enumerate(_batches(int(x.shape[0]), batch_size)):
        out = step(x[a:b], stateless_seed(seed, SALT_EVAL, i), n_samples)
        for acc, t in zip(parts, out, strict=True):
            acc.append(t.numpy())
    elbo, rec, kl = (np.concatenate(p) for p in parts)
    if per_example:
        return {"elbo": elbo, "reconstruction": rec, "kl": kl}
    return {"elbo": float(elbo.mean()), "reconstruction": float(rec.mean()),
            "kl": float(kl.mean())}


def _compiled(model, attr, make):
    """Cache one compiled function per model (compiling is the slow part)."""
    fn = model.__dict__.get(attr)
    if fn is None:
        fn = make()
        object.__setattr__(model, attr, fn)  # bypass tf.Module attribute tracking
    return fn


def _iwae_batch_fn(model):
    def iwae_batch(xb, k, chunk, seed):
        q = model.infer(xb)
        prior = model.prior()
        n_chunks = (k + chunk - 1) // chunk

        def body(c, running):
            z = q.sample(chunk, seed=stateless_seed(seed, c))              # [chunk, B, P]
            log_w = model.generate(z).log_prob(xb) + prior.log_prob(z) - q.log_prob(z)
            valid = tf.range(chunk) < k - c * chunk                        # ragged last chunk
            log_w = tf.where(valid[:, None], log_w, -np.inf)
            return c + 1, tf.reduce_logsumexp(tf.stack([running,
                                                        tf.reduce_logsumexp(log_w, 0)]), 0)

        init = tf.fill([tf.shape(xb)[0]], tf.constant(-np.inf, tf.float32))
        _, total = tf.while_loop(lambda c, r: c < n_chunks, body, [tf.constant(0), init])
        return total - tf.math.log(tf.cast(k, tf.float32))

    return tf.function(iwae_batch, jit_compile=True)


def iwae_log_likelihood(model, x, k: int = 5000, batch_size: int | None = None,
                        chunk: int | None = None, seed: int = 0, per_example: bool = False,
                        progress: bool = False, max_rows: int = 65536):
    """The importance-weighted bound :math:`\\mathcal L_k` (Burda et al., 2016), in nats.

    Args:
        model: a VAE.
        x: float data ``[N, D]`` in the likelihood's variant (see ``prepare_eval_data``).
        k: importance samples per image (5000 is the literature's standard).
        batch_size: images per compiled call (default: chosen from ``max_rows``).
        chunk: samples per inner step (default: chosen from ``max_rows``).
        seed: seeds the samples.
        per_example: return the ``[N]`` array instead of its mean.
        progress: show a progress bar over images.
        max_rows: bound on ``batch_size * chunk``, the decoder rows held at once
            (memory is about ``max_rows * D * 4`` bytes a few times over).

    Returns:
        The mean of :math:`\\mathcal L_k` over ``x`` (or the per-image values).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    x = tf.convert_to_tensor(x, tf.float32)
    n = int(x.shape[0])
    if chunk is None:
        chunk = int(min(k, 512))
    chunk = int(max(1, min(chunk, k)))
    if batch_size is None:
        batch_size = int(max(1, min(n, max_rows // chunk)))
    fn = _compiled(model, "_iwae_fn", lambda: _iwae_batch_fn(model))
    out = []
    bar = None
    if progress:
        bar = progress_bar(n, f"IWAE k={k}", "img")
    try:
        for i, (a, b) in enumerate(_batches(n, batch_size)):
            out.append(fn(x[a:b], tf.constant(k), tf.constant(chunk),
                          stateless_seed(seed, SALT_EVAL, 1, i)).numpy())
            if bar is not None:
                bar.update(b - a)
    finally:
        if bar is not None:
            bar.close()
    values = np.concatenate(out)
    return values if per_example else float(values.mean())


def bits_per_dim(log_likelihood_nats: float, dims: int, dequantized: bool = True) -> float:
    """Convert a per-image log-likelihood (nats) on ``dims`` pixels to bits per dimension.

    With ``dequantized=True`` the density is of pixels scaled by 1/256 and the
    result is the upper bound on the 8-bit data's bits/dim described above.
    """
    shift = dims * math.log(256.0) if dequantized else 0.0
    return -(log_likelihood_nats - shift) / (dims * math.log(2.0))


def evaluate(model, x_test, k: int = 5000, seed: int = 0, n_samples: int = 1,
             progress: bool = False, data_variant: str | None = None,
             test_seed: int = TEST_SEED) -> dict:
    """Test metrics of a trained model: ELBO terms, IWAE-k and (where defined) bits/dim.

    Args:
        model: a VAE.
        x_test: uint8 test pixels (transformed once with ``test_seed``) or float data.
        k: importance samples of the IWAE estimate (``0`` skips it).
        seed: seeds the z samples of the ELBO and IWAE estimates.
        n_samples: z samples per image for the ELBO.
        progress: progress bar for the IWAE estimate.
        data_variant: override the likelihood's data variant.
        test_seed: seeds the one fixed transform of the test pixels.

    Returns:
        A dict with ``test_elbo``, ``test_reconstruction``, ``test_kl``,
        ``iwae_k``, ``iwae_log_likelihood``, ``data_variant``, ``n_test``,
        ``test_transform_seed`` and,
        for densities on dequantized pixels, ``bits_per_dim_elbo`` and
        ``bits_per_dim_iwae``. All in nats per image unless named bits.
    """
    variant = data_variant or model.likelihood.data_variant
    x = prepare_eval_data(x_test, variant, seed=test_seed)
    elbo = evaluate_elbo(model, x, n_samples=n_samples, seed=seed)
    out = {"data_variant": variant, "n_test": int(x.shape[0]), "test_transform_seed": test_seed,
           "test_elbo": elbo["elbo"], "test_reconstruction": elbo["reconstruction"],
           "test_kl": elbo["kl"], "iwae_k": int(k), "iwae_log_likelihood": None}
    if k:
        out["iwae_log_likelihood"] = iwae_log_likelihood(model, x, k=k, seed=seed,
                                                         progress=progress)
    if variant == DEQUANTIZED:
        dims = int(x.shape[1])
        out["bits_per_dim_elbo"] = bits_per_dim(out["test_elbo"], dims)
        if out["iwae_log_likelihood"] is not None:
            out["bits_per_dim_iwae"] = bits_per_dim(out["iwae_log_likelihood"], dims)
    return out
