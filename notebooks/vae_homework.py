r"""The homework's code: the module you edit and the notebooks import.

Write your solutions where this file says ``TODO`` (each stub raises
``NotImplementedError`` naming its task until you do). Import the module from
the notebooks' folder (``import vae_homework``) and check each task right after
writing it with ``vae_helpers.course.checks``, for example
``checks.check_all(vae_homework, through="1c")``. The VAE class, its training
loop and the weights it saves (``save_weights``, ``load_weights``) are how one
notebook's model reaches the next in a fresh kernel.

Use TensorFlow, TensorFlow Probability and NumPy. From ``vae_helpers`` you may use
the student kit only (the data, plots, progress bars, ``record``, the notebook
helpers, ``set_seed`` and the checks); the package's own model, training and
evaluation are the reference your work is checked against, and importing them
fails the first check of every notebook.

The interface (fixed: the checks call exactly these):

=======  =====================================================================
task     what you write
=======  =====================================================================
1a       ``minibatch_elbo(log_likelihood, kl, n_total)``
1b       ``gaussian_log_likelihood_grads(x, mean, variance)``
1c       ``gaussian_kl(mu0, cov0, mu1, cov1)`` and ``standard_normal_kl(mu, variance)``
1d       ``reparameterize(mu, variance, eps)`` and
         ``reparameterization_gradient(fn, mu, variance, eps)``
2a       the class ``VAE``: ``__init__``, ``weights``, ``infer``, ``generate``,
         ``elbo_terms``, ``compute_elbo``
2b       ``make_train_step(vae, optimizer)`` and ``train(...)``
4a       ``laplace_sample(mu, b, u)``, ``laplace_sample_grads(mu, b, u)``,
         ``laplace_kl(mu1, b1, mu2, b2)``
=======  =====================================================================

Variances are non-negative by one fixed parametrization, given below and used
whenever your weights are loaded into the package's reference VAE (the checks do
this): a network outputs a free number
:math:`\rho`, and the variance is ``posterior_variance(rho)``
(:math:`\mathrm{softplus}(\rho) + 10^{-6}`) for q(z|x), ``likelihood_variance(rho)``
(:math:`1/(12 \cdot 256^2) + \mathrm{softplus}(\rho)`) for the learned scalar
:math:`\sigma^2` of p(x|z). The trained weights are saved as named float32 arrays
(``save_weights``, names and shapes in ``weight_shapes``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from vae_helpers import data
from vae_helpers.course import record
from vae_helpers.progress import progress_bar

tfd = tfp.distributions

INPUT_DIM = 784
#: the variance of U(0, 1/256), the dequantization noise inside one 8-bit intensity bin:
#: the floor of the likelihood's variance, so the density of a pixel stays bounded
MIN_LIKELIHOOD_VARIANCE = 1.0 / (12.0 * 256.0**2)
#: the floor of q(z|x)'s variances, which keeps log q(z|x) finite in float32
MIN_POSTERIOR_VARIANCE = 1e-6


# ----------------------------------------------------------------------------- given code
def posterior_variance(rho):
    """The variances of q(z|x) from the inference network's free outputs ``rho``."""
    return tf.nn.softplus(rho) + MIN_POSTERIOR_VARIANCE


def likelihood_variance(rho):
    """The variance sigma^2 of p(x|z) from its free parameter ``rho``."""
    return MIN_LIKELIHOOD_VARIANCE + tf.nn.softplus(rho)


def inverse_softplus(y: float) -> float:
    """The ``rho`` with ``softplus(rho) = y`` (to start a variance at a chosen value)."""
    return y + math.log(-math.expm1(-y))


def weight_shapes(latent_dim: int = 2, hidden_units: int = 512,
                  input_dim: int = INPUT_DIM) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the arrays ``VAE.weights`` returns.

    The inference network maps x to ``2 P`` numbers: the P means of q(z|x), then the
    P free parameters ``rho`` of its variances. The generative network maps z to the
    D pre-sigmoid means of p(x|z); ``likelihood/rho`` is the free parameter of its
    scalar variance.
    """
    return record.weight_shapes(latent_dim, hidden_units, input_dim)


WEIGHTS_FILE = "weights.npz"


def save_weights(vae, run_dir) -> Path:
    """Save ``vae.weights()`` as named float32 arrays in ``run_dir/weights.npz``."""
    return record.save_weights(vae.weights(), Path(run_dir) / WEIGHTS_FILE)


def load_weights(vae, run_dir) -> None:
    """Assign the arrays ``save_weights`` wrote in ``run_dir`` to ``vae``'s variables."""
    arrays = record.load_weights(Path(run_dir) / WEIGHTS_FILE)
    variables = vae.weights()
    missing = sorted(set(variables) - set(arrays))
    if missing:
        raise ValueError(f"{run_dir}: the saved weights lack {', '.join(missing)}")
    for name, variable in variables.items():
        if tuple(arrays[name].shape) != tuple(variable.shape):
            raise ValueError(f"{run_dir}: {name} has shape {arrays[name].shape}, the model "
                             f"{tuple(variable.shape)}: build the VAE with the run's sizes")
        variable.assign(arrays[name])


def load_vae(run_dir) -> VAE:
    """A ``VAE`` of the sizes saved in ``run_dir`` holding its saved weights."""
    arrays = record.load_weights(Path(run_dir) / WEIGHTS_FILE)
    latent_dim, hidden_units, input_dim = record.check_weights(WEIGHTS_FILE, arrays)
    vae = VAE(latent_dim=latent_dim, hidden_units=hidden_units, input_dim=input_dim)
    load_weights(vae, run_dir)
    return vae


# ----------------------------------------------------------------------------- 1a
def minibatch_elbo(log_likelihood, kl, n_total: int):
    r"""1a: the minibatch Monte Carlo estimate of the ELBO of all ``n_total`` images.

    Args:
        log_likelihood: ``[S, B]``: :math:`\log p(x_b \mid z_{s,b})` for S samples
            :math:`z_{s,b} \sim q(z \mid x_b)` of each of the B images of the minibatch.
        kl: ``[B]``: :math:`\mathrm{KL}(q(z \mid x_b) \,\|\, p(z))` of each image.
        n_total: N, the number of images in the training set.

    Returns:
        A scalar whose expectation, over the minibatch and the samples, is the ELBO
        :math:`\sum_{n=1}^N \mathcal L(x_n)` of the whole training set.
    """
    # BEGIN SOLUTION: 1a, the minibatch ELBO estimator (mind the scale)
    log_likelihood = tf.convert_to_tensor(log_likelihood, tf.float64)
    kl = tf.convert_to_tensor(kl, tf.float64)
    batch_size = tf.cast(tf.shape(kl)[0], tf.float64)
    per_image = tf.reduce_mean(log_likelihood, axis=0) - kl
    return float(n_total) / batch_size * tf.reduce_sum(per_image)
    # END SOLUTION


# ----------------------------------------------------------------------------- 1b
def gaussian_log_likelihood_grads(x, mean, variance):
    r"""1b: the gradients of :math:`\log \mathcal N(x;\ f, \sigma^2 I)`, summed over pixels.

    Args:
        x: ``[..., D]`` data.
        mean: ``[..., D]``: f, the decoder's output for each image.
        variance: the scalar :math:`\sigma^2 > 0`.

    Returns:
        ``(grad_mean, grad_variance)``: :math:`\partial/\partial f` (shape ``[..., D]``;
        backpropagation multiplies it by :math:`\partial f / \partial w` to give the
        gradient with respect to the decoder's weights w) and
        :math:`\partial/\partial \sigma^2` (shape ``[...]``, one per image).
    """
    # BEGIN SOLUTION: 1b, d/df and d/dsigma^2 of the Gaussian log-likelihood
    x = tf.convert_to_tensor(x, tf.float64)
    mean = tf.convert_to_tensor(mean, tf.float64)
    variance = tf.convert_to_tensor(variance, tf.float64)
    residual = x - mean
    pixels = tf.cast(tf.shape(x)[-1], tf.float64)
    grad_mean = residual / variance
    grad_variance = (-pixels / (2.0 * variance)
                     + tf.reduce_sum(residual**2, axis=-1) / (2.0 * variance**2))
    return grad_mean, grad_variance
    # END SOLUTION


# ----------------------------------------------------------------------------- 1c
def gaussian_kl(mu0, cov0, mu1, cov1):
    r"""1c: :math:`\mathrm{KL}(\mathcal N(\mu_0, \Sigma_0) \,\|\, \mathcal N(\mu_1, \Sigma_1))`.

    Args:
        mu0, mu1: ``[k]`` means.
        cov0, cov1: ``[k, k]`` symmetric positive definite covariances.

    Returns:
        The KL divergence in nats, a float.
    """
    # BEGIN SOLUTION: 1c, KL between two multivariate Gaussians
    mu0, mu1 = np.asarray(mu0, np.float64), np.asarray(mu1, np.float64)
    cov0, cov1 = np.asarray(cov0, np.float64), np.asarray(cov1, np.float64)
    k = mu0.shape[-1]
    diff = mu1 - mu0
    trace = np.trace(np.linalg.solve(cov1, cov0))
    mahalanobis = diff @ np.linalg.solve(cov1, diff)
    logdet = np.linalg.slogdet(cov1)[1] - np.linalg.slogdet(cov0)[1]
    return float(0.5 * (trace + mahalanobis - k + logdet))
    # END SOLUTION


def standard_normal_kl(mu, variance):
    r"""1c: :math:`\mathrm{KL}(\mathcal N(\mu, \mathrm{diag}\,\sigma^2) \,\|\, \mathcal N(0, I))`.

    Args:
        mu, variance: ``[..., P]`` tensors (the VAE's q(z|x) for each image).

    Returns:
        ``[...]``: one KL per row, summed over the P coordinates (a TensorFlow tensor,
        so the VAE can differentiate through it).
    """
    # BEGIN SOLUTION: 1c, the KL of a diagonal Gaussian from N(0, I)
    return 0.5 * tf.reduce_sum(variance + mu**2 - 1.0 - tf.math.log(variance), axis=-1)
    # END SOLUTION


# ----------------------------------------------------------------------------- 1d
def reparameterize(mu, variance, eps):
    r"""1d: :math:`z = \mu + \sigma \odot \varepsilon`, differentiable in ``mu`` and ``variance``.

    Args:
        mu, variance: ``[..., P]``.
        eps: standard normal noise, broadcastable against ``mu`` (for S samples of each
            of B rows: ``[S, B, P]`` with ``mu`` ``[B, P]``).
    """
    # BEGIN SOLUTION: 1d, the reparameterized sample z
    return mu + tf.sqrt(variance) * eps
    # END SOLUTION


def reparameterization_gradient(fn, mu, variance, eps):
    r"""1d: the reparameterized estimate of the gradient of :math:`\mathbb E_q[f(z)]`.

    Args:
        fn: a TensorFlow function of ``z`` ``[S, P]`` returning ``[S]``.
        mu, variance: ``[P]`` float64 tensors, the parameters of q = N(mu, diag variance).
        eps: ``[S, P]`` standard normal draws.

    Returns:
        ``(grad_mu, grad_variance)``, each ``[P]``: the average over the S samples of
        the gradient of ``fn(reparameterize(mu, variance, eps))``.
    """
    # BEGIN SOLUTION: 1d, the Monte Carlo gradient through z
    mu = tf.convert_to_tensor(mu)
    variance = tf.convert_to_tensor(variance)
    with tf.GradientTape() as tape:
        tape.watch([mu, variance])
        objective = tf.reduce_mean(fn(reparameterize(mu, variance, eps)))
    return tuple(tape.gradient(objective, [mu, variance]))
    # END SOLUTION


# ----------------------------------------------------------------------------- 2a
class VAE(tf.Module):
    """2a: the homework's VAE, q(z|x) = N(mu, diag sigma^2) and p(x|z) = N(f(z, w), sigma^2 I).

    Both networks have one hidden layer of ``hidden_units`` ReLU units; weights start
    from N(0, ``init_stddev``^2) (0.01 is a standard deviation), biases at zero; the
    decoder's mean is a sigmoid; sigma^2 is learned and starts at ``init_variance``.

    Args:
        latent_dim: P (2).
        hidden_units: the hidden layer's width (512).
        input_dim: D (784).
        init_stddev: the standard deviation of the initial weights (0.01).
        init_variance: the starting sigma^2 of p(x|z) (0.1).
        seed: the seed of the initial weights.
    """

    def __init__(self, latent_dim: int = 2, hidden_units: int = 512,
                 input_dim: int = INPUT_DIM, init_stddev: float = 0.01,
                 init_variance: float = 0.1, seed: int = 0):
        super().__init__(name="vae")
        self.latent_dim, self.hidden_units, self.input_dim = latent_dim, hidden_units, input_dim
        # BEGIN SOLUTION: 2a, the variables of both networks and of sigma^2 (weight_shapes)
        generator = tf.random.Generator.from_seed(seed, alg="philox")
        self._variables = {}
        for name, shape in weight_shapes(latent_dim, hidden_units, input_dim).items():
            if name.endswith("kernel"):
                start = generator.normal(shape, stddev=init_stddev)
            elif name == "likelihood/rho":
                start = tf.fill(shape, inverse_softplus(init_variance - MIN_LIKELIHOOD_VARIANCE))
            else:
                start = tf.zeros(shape)
            self._variables[name] = tf.Variable(start, name=name.replace("/", "_"))
        # END SOLUTION

    def weights(self) -> dict[str, tf.Variable]:
        """The model's variables by the names and shapes of ``weight_shapes``."""
        # BEGIN SOLUTION: 2a, the variables by name
        return dict(self._variables)
        # END SOLUTION

    def infer(self, x) -> tfd.Distribution:
        """q(z|x) for flattened images ``x`` ``[B, D]``: batch shape ``[B]``, event ``[P]``."""
        # BEGIN SOLUTION: 2a, the inference network and q(z|x)
        v = self._variables
        x = tf.convert_to_tensor(x, tf.float32)
        hidden = tf.nn.relu(x @ v["encoder/hidden/kernel"] + v["encoder/hidden/bias"])
        out = hidden @ v["encoder/output/kernel"] + v["encoder/output/bias"]
        mu, rho = tf.split(out, 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=mu, scale_diag=tf.sqrt(posterior_variance(rho)))
        # END SOLUTION

    def generate(self, z) -> tfd.Distribution:
        """p(x|z) for codes ``z`` ``[..., P]``: event shape ``[D]``, mean in (0, 1)."""
        # BEGIN SOLUTION: 2a, the generative network and p(x|z)
        v = self._variables
        z = tf.convert_to_tensor(z, tf.float32)
        hidden = tf.nn.relu(z @ v["decoder/hidden/kernel"] + v["decoder/hidden/bias"])
        mean = tf.sigmoid(hidden @ v["decoder/output/kernel"] + v["decoder/output/bias"])
        scale = tf.broadcast_to(tf.sqrt(likelihood_variance(v["likelihood/rho"])), tf.shape(mean))
        return tfd.Independent(tfd.Normal(loc=mean, scale=scale), reinterpreted_batch_ndims=1)
        # END SOLUTION

    def elbo_terms(self, x, eps=None):
        r"""The two terms of the ELBO of each image, with one reparameterized sample.

        Args:
            x: ``[B, D]`` images.
            eps: ``[B, P]`` standard normal noise; ``None`` draws it.

        Returns:
            ``(log_likelihood, kl)``, each ``[B]``: :math:`\log p(x \mid z)` at
            ``z = reparameterize(mu, sigma^2, eps)``, and KL(q(z|x) || N(0, I)).
        """
        # BEGIN SOLUTION: 2a, the reconstruction term and the KL, through your 1c and 1d
        x = tf.convert_to_tensor(x, tf.float32)
        q = self.infer(x)
        mu, variance = q.mean(), q.variance()
        if eps is None:
            eps = tf.random.normal(tf.shape(mu))
        z = reparameterize(mu, variance, eps)
        return self.generate(z).log_prob(x), standard_normal_kl(mu, variance)
        # END SOLUTION

    def compute_elbo(self, x, eps=None):
        """The Monte Carlo ELBO of each image in ``x`` (``[B]``, nats): one sample each."""
        # BEGIN SOLUTION: 2a, the ELBO from its two terms
        log_likelihood, kl = self.elbo_terms(x, eps)
        return log_likelihood - kl
        # END SOLUTION


# ----------------------------------------------------------------------------- 2b
def make_train_step(vae: VAE, optimizer):
    """2b: a compiled ``tf.function`` ``step(x_batch) -> mean ELBO`` that ascends the ELBO.

    Each call draws new noise, computes the batch's mean ELBO, and applies one
    ``optimizer`` update to ``vae.trainable_variables`` in the direction that raises it.
    """
    # BEGIN SOLUTION: 2b, one compiled step of stochastic gradient ascent
    variables = vae.trainable_variables

    @tf.function(jit_compile=True)
    def step(x_batch):
        with tf.GradientTape() as tape:
            elbo = tf.reduce_mean(vae.compute_elbo(x_batch))
            loss = -elbo
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return elbo

    return step
    # END SOLUTION


def train(vae: VAE, train_pixels, epochs: int, run_dir, batch_size: int = 128,
          learning_rate: float = 1e-3, seed: int = 0, test_images=None,
          progress: bool = True) -> list[dict]:
    """2b: train ``vae`` for ``epochs`` epochs on dequantized ``train_pixels``, resumably.

    Each epoch shuffles the images, dequantizes them with fresh noise in one call
    (``vae_helpers.data.dequantize``, seeded by the seed and the epoch) and calls the
    compiled step on each minibatch of ``batch_size`` of them in turn (the last,
    incomplete minibatch is left out). After each epoch the test ELBO is measured by
    a compiled function, the model and the optimizer are checkpointed in
    ``run_dir/checkpoints`` and the weights saved (``save_weights``), so a second
    call with the same arguments continues where an interrupted one stopped.

    Args:
        vae: the model, trained in place.
        train_pixels: uint8 images ``[N, 28, 28]`` or ``[N, 784]``.
        epochs: the total number of epochs (already trained ones count).
        run_dir: where the checkpoints, the weights and ``history`` go.
        batch_size, learning_rate, seed: the minibatch size, Adam's step size, and
            the seed of the shuffles and the dequantization noise.
        test_images: optional float ``[M, D]`` test images (``data.test_set``), whose
            mean ELBO is measured after each epoch.
        progress: show a progress bar over the epochs.

    Returns:
        One row per epoch trained so far: ``{"epoch": e, "train_elbo": the mean of the
        epoch's minibatch ELBOs, "test_elbo": the test images' mean ELBO after the epoch
        (``None`` without ``test_images``), "sigma2": the learned likelihood variance
        ``likelihood_variance(rho)`` after the epoch, "seconds": the epoch's duration}``.
    """
    # BEGIN SOLUTION: 2b, the loop over epochs and minibatches, checkpointed each epoch
    run_dir = Path(run_dir)
    pixels = data.flatten(np.asarray(train_pixels))
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    step = make_train_step(vae, optimizer)
    mean_elbo = tf.function(lambda x: tf.reduce_mean(vae.compute_elbo(x)))
    epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    # one row per epoch: train ELBO, test ELBO (NaN without test images), sigma^2, seconds
    history = tf.Variable(tf.zeros([0, 4], tf.float64), shape=[None, 4], name="history")
    checkpoint = tf.train.Checkpoint(vae=vae, optimizer=optimizer, epoch=epoch, history=history)
    manager = tf.train.CheckpointManager(checkpoint, run_dir / "checkpoints", max_to_keep=2)
    checkpoint.restore(manager.latest_checkpoint)
    bar = progress_bar(epochs, "epochs", "epoch", int(epoch.numpy())) if progress else None
    n_batches = len(pixels) // batch_size
    while int(epoch.numpy()) < epochs:
        e = int(epoch.numpy())
        start = time.perf_counter()
        order = np.random.default_rng([seed, e]).permutation(len(pixels))
        # the whole epoch in one call: dequantizing each minibatch separately would cost
        # about as much as the compiled step itself, in small operations
        x = data.dequantize(pixels[order[:n_batches * batch_size]], seed=[seed, e])
        total = 0.0
        for b in range(n_batches):
            total += float(step(x[b * batch_size:(b + 1) * batch_size]))
        seconds = time.perf_counter() - start
        test_elbo = math.nan
        if test_images is not None:
            test_elbo = float(mean_elbo(test_images))
        sigma2 = float(likelihood_variance(vae.weights()["likelihood/rho"]))
        epoch.assign_add(1)
        row = [[total / n_batches, test_elbo, sigma2, seconds]]
        history.assign(tf.concat([history, tf.constant(row, tf.float64)], axis=0))
        manager.save()
        save_weights(vae, run_dir)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_elbo=f"{total / n_batches:.2f}")
    if bar is not None:
        bar.close()
    return [{"epoch": i + 1, "train_elbo": float(train_elbo),
             "test_elbo": None if math.isnan(test_elbo) else float(test_elbo),
             "sigma2": float(sigma2), "seconds": float(seconds)}
            for i, (train_elbo, test_elbo, sigma2, seconds) in enumerate(history.numpy())]
    # END SOLUTION


# ----------------------------------------------------------------------------- 4a
def laplace_sample(mu, b, u):
    r"""4a: Laplace(mu, b) samples by the inverse CDF of uniform draws ``u`` in (0, 1)."""
    # BEGIN SOLUTION: 4a, the inverse-CDF Laplace sampler
    centred = np.asarray(u, np.float64) - 0.5
    return mu - b * np.sign(centred) * np.log1p(-2.0 * np.abs(centred))
    # END SOLUTION


def laplace_sample_grads(mu, b, u):
    r"""4a: the pathwise derivatives :math:`(\partial z/\partial\mu, \partial z/\partial b)`
    of ``laplace_sample(mu, b, u)``, each of ``u``'s shape."""
    # BEGIN SOLUTION: 4a, the pathwise gradient of the sample
    z = laplace_sample(mu, b, u)
    return np.ones_like(z), (z - mu) / b
    # END SOLUTION


def laplace_kl(mu1, b1, mu2, b2):
    r"""4a: :math:`\mathrm{KL}(\mathrm{Lap}(\mu_1, b_1) \,\|\, \mathrm{Lap}(\mu_2, b_2))`,
    elementwise over the arrays of parameters."""
    # BEGIN SOLUTION: 4a, the Laplace KL in closed form
    gap = np.abs(np.asarray(mu1, np.float64) - mu2)
    return np.log(b2 / b1) + gap / b2 + b1 / b2 * np.exp(-gap / b1) - 1.0
    # END SOLUTION
