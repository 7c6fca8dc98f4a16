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

How the IWAE estimate is made fast
    k = 5000 samples for each of 10,000 test images are 5·10⁷ passes through the
    decoder. Almost all of a pass is the product of the 512 hidden units with the
    512 × 784 output weights, about 0.8 MFLOP, so the plain computation needs
    4·10¹³ FLOP: minutes on two cores even at the matrix-multiply peak. Three
    things cut the time down; none of them changes the estimator.

    * One image at a time. Its k noise vectors are drawn at once with Philox
      (``distributions.standard_normal``; TFP's own sampler would use ThreeFry
      under XLA, far slower) from a seed made of ``seed`` and the image's index,
      and pushed through q's TFP bijector (``distributions.sample_from_noise``).
      An image's estimate therefore depends on neither ``batch_size`` nor
      ``chunk``: those only decide how the work is cut up.
    * The first decoder layer factored. When the decoder starts with a ReLU
      layer, each hidden unit :math:`h_j = \max(0, a_j^\top z + b_j)` is, over a
      chunk of samples from one narrow posterior, either on for all of them
      (then :math:`h_j` is affine in z), off for all of them (:math:`h_j = 0`), or
      switching. The on units' contribution to the next layer,
      :math:`\sum_{j\,\mathrm{on}} (a_j^\top z + b_j)\, w_j`, collapses into one
      affine map of z (P + 1 rows, computed once per chunk), the off units drop
      out, and only the switching units go through the ReLU. Which units are on,
      off or switching is decided on the box that holds the chunk's samples, by
      interval arithmetic, so it holds for every sample. For the trained 2-D
      homework model 15 to 20 of the 512 units switch in a chunk of 1024 samples,
      so the next layer's product shrinks from 512 rows to a few dozen. When
      more than a quarter of the units switch (wide posteriors, such as an
      untrained model's) the chunk goes through the plain decoder instead. Both
      give the same numbers up to float rounding.
    * All of it runs inside one XLA-compiled call per batch of images; the last,
      smaller batch is padded to the same shape, so it is not compiled again.
      (Estimates over fewer than ``XLA_MIN_SAMPLES`` samples run the same graph
      without XLA, whose compilation would take longer than they do.)

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
from vae_helpers import distributions as dist
from vae_helpers.backend import tf
from vae_helpers.model import Dense
from vae_helpers.progress import progress_bar
from vae_helpers.seeding import SALT_EVAL, stateless_seed

#: Data variants on which a likelihood is a continuous density of dequantized pixels.
DEQUANTIZED = "dequantized"

#: The seed of the one fixed transform of the test set (its dequantization noise or
#: its binarization). It does not depend on a run's training seed, so every run's
#: test numbers are computed on the same data.
TEST_SEED = data_lib.TEST_SEED

#: Importance samples of one image evaluated at once by default (the IWAE chunk).
DEFAULT_CHUNK = 1024
#: Importance samples per compiled call by default: ``batch_size = SAMPLES_PER_CALL // k``.
SAMPLES_PER_CALL = 2**19
#: Chunks at least this large use the factored first decoder layer (see the module docs).
FACTOR_MIN_CHUNK = 256
#: Switching hidden units handled per step of the factored first layer.
FACTOR_GROUP = 32
#: Estimates over at least this many samples (images times k) are compiled with XLA;
#: smaller ones (tests, the smoke profile) skip its compilation of a few seconds.
XLA_MIN_SAMPLES = 10**6


def prepare_eval_data(x, variant: str, seed: int = TEST_SEED) -> tf.Tensor:
    """One fixed transform of evaluation pixels into ``variant`` (float ``[N, D]``):
    ``data.test_set``, where it lives so that the student kit has it too."""
    return data_lib.test_set(x, variant, seed)


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
    # A graph without XLA: a forward pass over the test set runs as fast either way, and
    # XLA's compilation (seconds per model) would be paid for nothing.
    step = _compiled(model, "_elbo_fn", lambda: tf.function(
        lambda xb, s, k: model.elbo_terms(xb, k, seed=s), jit_compile=False))
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


def _factorable(model) -> bool:
    """Whether the decoder is Dense layers starting with a ReLU layer (the homework's is),
    fed with continuous codes."""
    layers = getattr(model.decoder, "layers", ())
    return (getattr(model, "latent_type", "continuous") == "continuous" and len(layers) >= 2
            and all(isinstance(layer, Dense) for layer in layers)
            and layers[0].activation == "relu")


def _split_units(layer, z):
    """Masks ``[H]`` of the ReLU ``layer``'s units on for all rows of ``z`` and of those switching.

    Over the box ``[min z, max z]`` the pre-activation ``z @ w_j + b_j`` of unit j
    lies within ``mid_j ± spread_j``: the unit is on where that interval is
    non-negative, off where it is non-positive, and switching otherwise.
    """
    lo, hi = tf.reduce_min(z, 0), tf.reduce_max(z, 0)
    mid = tf.linalg.matvec(layer.w, (lo + hi) / 2, transpose_a=True) + layer.b
    spread = tf.linalg.matvec(tf.abs(layer.w), (hi - lo) / 2, transpose_a=True)
    on = mid - spread >= 0
    return on, ~on & (mid + spread > 0)


def _factored_decoder(layers, z, on, switching, group: int):
    """The decoder's output at the rows ``z`` ``[C, P]``, with its first (ReLU) layer factored.

    ``on`` and ``switching`` (``[H]``, from ``_split_units``) must hold for every
    row. The on units enter the second layer through one affine map of z, the
    switching ones through their ReLU, ``group`` at a time, the off ones not at all.
    """
    first, second = layers[0], layers[1]
    n_hidden = int(first.w.shape[1])
    n_switching = tf.reduce_sum(tf.cast(switching, tf.int32))
    # the switching units first, in index order (top_k keeps ties in index order)
    _, order = tf.math.top_k(tf.cast(switching, tf.float32), n_hidden)
    order = tf.pad(order, [[0, -n_hidden % group]])
    on = tf.cast(on, tf.float32)
    affine_w = tf.matmul(first.w * on, second.w)                                       # [P, O]
    affine_b = tf.linalg.matvec(second.w, first.b * on, transpose_a=True) + second.b  # [O]

    def switching_part(g):
        idx = tf.slice(order, tf.reshape(g * group, [1]), [group])
        kept = tf.cast(g * group + tf.range(group) < n_switching, tf.float32)
        h = tf.nn.relu(tf.matmul(z, tf.gather(first.w, idx, axis=1)) + tf.gather(first.b, idx))
        return h, tf.gather(second.w, idx) * kept[:, None]                  # [C, group], [group, O]

    h, w = switching_part(0)
    out = tf.matmul(tf.concat([h, z, tf.ones_like(z[:, :1])], 1),
                    tf.concat([w, affine_w, affine_b[None]], 0))

    def more(g, acc):
        h, w = switching_part(g)
        return g + 1, acc + tf.matmul(h, w)

    n_groups = (n_switching + group - 1) // group
    _, out = tf.while_loop(lambda g, _: g < n_groups, more, [tf.constant(1), out])
    if second.activation == "relu":
        out = tf.nn.relu(out)
    for layer in layers[2:]:
        out = layer(out)
    return out


def _log_likelihood(model, z, x, factored: bool):
    """log p(x | z) for samples z ``[C, 1, P]`` of one image x ``[1, D]``: shape ``[C, 1]``."""
    if not factored:
        return model.generate(z).log_prob(x)
    layers = model.decoder.layers
    rows = z[:, 0, :]
    on, switching = _split_units(layers[0], rows)
    n_hidden = int(layers[0].w.shape[1])
    group = min(FACTOR_GROUP, max(1, n_hidden // 4))
    logits = tf.cond(tf.reduce_sum(tf.cast(switching, tf.int32)) > n_hidden // 4,
                     lambda: model.decoder(rows),
                     lambda: _factored_decoder(layers, rows, on, switching, group))
    return model.likelihood(logits[:, None, :]).log_prob(x)


def _iwae_batch_fn(model, jit: bool):
    def iwae_batch(xb, count, seed, start, k: int, chunk: int, factored: bool):
        """The bound of images ``xb[:count]``; image i's samples are seeded with ``start + i``."""
        n_chunks = -(-k // chunk)
        prior = model.prior()
        latent = model.latent_dim

        def image(i, out):
            x = tf.gather(xb, [i])                                              # [1, D]
            q = model.infer(x)
            image_seed = tf.random.experimental.stateless_fold_in(
                seed, tf.cast(start + i, tf.int64), alg="philox")
            if dist.has_standard_normal_noise(q):
                noise = dist.standard_normal([k, 1, latent], image_seed)
                noise = tf.pad(noise, [[0, n_chunks * chunk - k], [0, 0], [0, 0]])

                def draw(c):
                    begin = tf.stack([c * chunk, 0, 0])
                    return dist.sample_from_noise(q, tf.slice(noise, begin, [chunk, 1, latent]))
            else:  # a family TFP does not sample from standard normal noise
                def draw(c):
                    return q.sample(chunk, seed=stateless_seed(image_seed, c))

            def body(c, running):
                z = draw(c)                                                     # [chunk, 1, P]
                log_w = _log_likelihood(model, z, x, factored) + prior.log_prob(z) - q.log_prob(z)
                valid = tf.range(chunk) < k - c * chunk                         # ragged last chunk
                log_w = tf.where(valid[:, None], log_w, -np.inf)
                return c + 1, tf.reduce_logsumexp(tf.stack([running,
                                                            tf.reduce_logsumexp(log_w, 0)]), 0)

            init = tf.constant([-np.inf], tf.float32)
            _, total = tf.while_loop(lambda c, r: c < n_chunks, body, [tf.constant(0), init])
            return i + 1, out.write(i, total[0])

        values = tf.TensorArray(tf.float32, size=int(xb.shape[0]))
        _, values = tf.while_loop(lambda i, _: i < count, image, [tf.constant(0), values])
        return values.stack() - math.log(k)

    return tf.function(iwae_batch, jit_compile=jit)


def iwae_log_likelihood(model, x, k: int = 5000, batch_size: int | None = None,
                        chunk: int | None = None, seed: int = 0, per_example: bool = False,
                        progress: bool = False, max_rows: int = 65536):
    """The importance-weighted bound :math:`\\mathcal L_k` (Burda et al., 2016), in nats.

    Args:
        model: a VAE.
        x: float data ``[N, D]`` in the likelihood's variant (see ``prepare_eval_data``).
        k: importance samples per image (5000 is the literature's standard).
        batch_size: images per compiled call (default: ``SAMPLES_PER_CALL // k``).
        chunk: samples of one image evaluated at once (default: ``DEFAULT_CHUNK``,
            at most ``max_rows``).
        seed: seeds the samples. Image n's samples depend only on ``seed``, n and k,
            so ``batch_size`` and ``chunk`` change the result only by float rounding.
        per_example: return the ``[N]`` array instead of its mean.
        progress: show a progress bar over images.
        max_rows: bound on the default ``chunk``, the decoder rows held at once
            (memory is about ``chunk * D * 4`` bytes a few times over, plus the
            ``k * P`` noise values of the current image).

    Returns:
        The mean of :math:`\\mathcal L_k` over ``x`` (or the per-image values).

    A model with a small discrete code (``discrete.CategoricalVAE`` whose codes can be
    enumerated) draws how often each code is sampled instead of the samples
    themselves (``CategoricalVAE.iwae_log_likelihood``): the same estimator, cheaper.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    x = tf.convert_to_tensor(x, tf.float32)
    n = int(x.shape[0])
    if getattr(model, "enumerable", False):  # a small discrete code: counts of each code
        values = np.concatenate([
            model.iwae_log_likelihood(x[a:b], k, seed=stateless_seed(seed, SALT_EVAL, 1, a))
            .numpy() for a, b in _batches(n, 1000)])
        return values if per_example else float(values.mean())
    if chunk is None:
        chunk = min(DEFAULT_CHUNK, max_rows)
    chunk = int(max(1, min(chunk, k)))
    if batch_size is None:
        batch_size = SAMPLES_PER_CALL // k
    batch_size = int(max(1, min(batch_size, n)))
    factored = chunk >= FACTOR_MIN_CHUNK and _factorable(model)
    jit = n * k >= XLA_MIN_SAMPLES
    fn = _compiled(model, f"_iwae_fn_{'xla' if jit else 'graph'}",
                   lambda: _iwae_batch_fn(model, jit))
    seed = stateless_seed(seed, SALT_EVAL, 1)
    out = []
    bar = None
    if progress:
        bar = progress_bar(n, f"IWAE k={k}", "img")
    try:
        for a, b in _batches(n, batch_size):
            xb = x[a:b]
            if b - a < batch_size:  # the compiled shape; the padding rows are not evaluated
                xb = tf.concat([xb, tf.zeros([batch_size - (b - a), xb.shape[1]])], 0)
            values = fn(xb, tf.constant(b - a), seed, tf.constant(a), k, chunk, factored)
            out.append(values.numpy()[:b - a])
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
        ``test_transform_seed``, for models with a small discrete code
        (``discrete.CategoricalVAE``) ``exact_log_likelihood`` and,
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
    if getattr(model, "enumerable", False):  # a small discrete code: log p(x) itself
        exact = [model.exact_log_likelihood(x[a:b]).numpy()
                 for a, b in _batches(int(x.shape[0]), 1000)]
        out["exact_log_likelihood"] = float(np.concatenate(exact).mean())
    if variant == DEQUANTIZED:
        dims = int(x.shape[1])
        out["bits_per_dim_elbo"] = bits_per_dim(out["test_elbo"], dims)
        if out["iwae_log_likelihood"] is not None:
            out["bits_per_dim_iwae"] = bits_per_dim(out["iwae_log_likelihood"], dims)
    return out
