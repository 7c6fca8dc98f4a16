r"""Likelihoods, priors and variational families, all built from TFP distributions.

A VAE is three distributions wired to two networks:

* the prior :math:`p(z)`,
* the likelihood :math:`p_\Theta(x \mid z)`, whose parameters come from the
  generative network :math:`f(z; w)` (plus, for the Gaussian, the learned
  covariance :math:`\Sigma`, so :math:`\Theta = (w, \Sigma)`),
* the variational posterior :math:`q_\phi(z \mid x)`, whose parameters come from
  the inference network :math:`g(x; \phi)`.

Each piece is a small object looked up by name in a registry (``LIKELIHOODS``,
``PRIORS``, ``POSTERIORS``), so a new prior or family is one class and one
registry entry; the model and the training loop do not change. Densities,
sampling (reparameterized where the family allows it) and KL divergences are
TFP's; ``kl_divergence`` uses TFP's analytic KL where one is registered and a
Monte Carlo estimate :math:`\log q(z) - \log p(z)` at the sampled ``z`` where
none is.

The Laplace prior and family
----------------------------
:math:`p(z) = \prod_j \mathrm{Lap}(z_j;\ 0, \tau)` (``prior="laplace"``, scale
``prior_scale`` :math:`= \tau`) and :math:`q(z \mid x) = \prod_j
\mathrm{Lap}(z_j;\ \mu_j, b_j)` (``posterior="laplace"``). A Laplace variable is
reparameterized through its inverse CDF: with :math:`\varepsilon \sim U(0, 1)`,

.. math::

    z = \mu - b\, \mathrm{sign}(\varepsilon - \tfrac12)\,
        \log\big(1 - 2\,|\varepsilon - \tfrac12|\big),

a differentiable function of :math:`(\mu, b)` with :math:`\partial z / \partial \mu = 1`
and :math:`\partial z / \partial b = (z - \mu) / b`. TFP's ``tfd.Laplace`` samples
exactly this way (fully reparameterized); ``laplace_from_uniform`` writes the map
out, and the tests compare the two. KL(Laplace ‖ Laplace) is TFP's closed form;
a Gaussian :math:`q` against the Laplace prior has none registered, so its KL is
the Monte Carlo estimate described above.

Fast reparameterized samples
----------------------------
TFP's samplers draw their noise with TensorFlow's default stateless algorithm,
which under XLA on a CPU is ThreeFry, about a hundred times slower than Philox;
for the importance-weighted bound, with thousands of samples per image, that is
a real cost. ``standard_normal`` therefore draws the noise itself: Philox bits
(``alg="philox"`` named explicitly), made uniform on a grid of :math:`2^{-23}`
and mapped through TFP's standard normal quantile. Philox's bits are the same
whether the code runs eagerly or compiled, so the noise is too (up to the
rounding of the quantile function). ``sample_from_noise`` pushes such noise
through the distribution's own TFP bijector, :math:`z = \mu + L\,\varepsilon`
for the Gaussian families, which is exactly how TFP samples them; the tests
compare the draws with TFP's sampler.

The Gaussian likelihood and its bound
-------------------------------------
:math:`p(x \mid z) = \mathcal N(x;\ \mathrm{sigmoid}(f(z; w)),\ \Sigma)` with
:math:`\Sigma = \sigma^2 I` (``covariance="scalar"``, the default) or
:math:`\Sigma = \mathrm{diag}(\sigma_1^2, \dots, \sigma_D^2)`
(``covariance="diagonal"``). Each variance is
:math:`\sigma_{\min}^2 + \mathrm{softplus}(\rho)` with a free parameter
:math:`\rho`. The floor :math:`\sigma_{\min}^2 = 1 / (12 \cdot 256^2)` is the
variance of the uniform dequantization noise inside one 8-bit intensity bin, so
no sensible fit is excluded, yet every pixel's density is at most
:math:`(2\pi\sigma_{\min}^2)^{-1/2}`: the failure where a learned variance
collapses on the always-black border pixels and the "log-likelihood" runs to
:math:`+\infty` cannot happen. The model is trained on dequantized pixels
:math:`(\text{pixel} + u)/256`, on which this density is a proper continuous
density.
"""

from __future__ import annotations

import math

from vae_helpers.backend import tf, tfd

#: Variance of U(0, 1/256): the dequantization noise inside one intensity bin.
MIN_VARIANCE = 1.0 / (12.0 * 256.0**2)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


# --------------------------------------------------------------------------- likelihoods
class Likelihood(tf.Module):
    """Maps the generative network's output (pre-sigmoid) to :math:`p(x \\mid z)`."""

    #: the name under which ``LIKELIHOODS`` registers the class
    kind: str = ""
    #: which transform of the pixels this likelihood is a density or mass for
    data_variant: str = ""

    def __call__(self, logits: tf.Tensor) -> tfd.Distribution:
        raise NotImplementedError

    def spec(self) -> dict:
        """A JSON-friendly description of the likelihood's settings."""
        return {"likelihood": self.kind}


class GaussianLikelihood(Likelihood):
    """:math:`\\mathcal N(\\mathrm{sigmoid}(f), \\Sigma)` with a learned, floored variance.

    Args:
        event_dim: number of pixels D.
        covariance: ``"scalar"`` (one :math:`\\sigma^2`) or ``"diagonal"`` (one per pixel).
        init_variance: the variance the training starts from.
        min_variance: the floor that keeps the density bounded (see the module docs).
        output_activation: ``"sigmoid"`` (the homework's mean in (0, 1)) or
            ``"linear"`` (an unconstrained mean, for linear-Gaussian checks).
    """

    kind = "gaussian"
    data_variant = "dequantized"

    def __init__(
        self,
        event_dim: int,
        covariance: str = "scalar",
        init_variance: float = 0.1,
        min_variance: float = MIN_VARIANCE,
        output_activation: str = "sigmoid",
        name: str | None = None,
    ):
        super().__init__(name=name)
        if covariance not in ("scalar", "diagonal"):
            raise ValueError(f"covariance must be 'scalar' or 'diagonal', got {covariance!r}")
        if not init_variance > min_variance:
            raise ValueError(
                f"init_variance ({init_variance}) must exceed min_variance ({min_variance})"
            )
        if output_activation not in ("sigmoid", "linear"):
            raise ValueError(
                f"output_activation must be 'sigmoid' or 'linear', got {output_activation!r}"
            )
        self.covariance = covariance
        self.min_variance = float(min_variance)
        self.init_variance = float(init_variance)
        self.output_activation = output_activation
        shape = [] if covariance == "scalar" else [event_dim]
        self.raw_variance = tf.Variable(
            tf.fill(shape, _inverse_softplus(init_variance - min_variance)),
            name="raw_variance",
        )

    @property
    def variance(self) -> tf.Tensor:
        """The learned :math:`\\sigma^2` (a scalar or one per pixel), always > ``min_variance``."""
        return self.min_variance + tf.nn.softplus(self.raw_variance)

    def max_log_density(self, event_dim: int) -> float:
        """The largest value :math:`\\log p(x \\mid z)` can take for ``event_dim`` pixels."""
        return -0.5 * event_dim * math.log(2.0 * math.pi * self.min_variance)

    def __call__(self, logits):
        loc = tf.sigmoid(logits) if self.output_activation == "sigmoid" else logits
        scale = tf.broadcast_to(tf.sqrt(self.variance), tf.shape(loc))
        return tfd.Independent(tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=1)

    def spec(self):
        return {
            "likelihood": self.kind,
            "covariance": self.covariance,
            "min_variance": self.min_variance,
            "output_activation": self.output_activation,
        }


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels with probability :math:`\\mathrm{sigmoid}(f)`.

    A proper likelihood for binary data only: train it on dynamically binarized
    pixels, the setting of the published MNIST results.
    """

    kind = "bernoulli"
    data_variant = "binarized"

    def __call__(self, logits):
        return tfd.Independent(
            tfd.Bernoulli(logits=logits, dtype=tf.float32), reinterpreted_batch_ndims=1
        )


class ContinuousBernoulliLikelihood(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): normalised on [0, 1].

    Its parameter is :math:`\\lambda = \\mathrm{sigmoid}(f)`; unlike the Bernoulli
    it is a density for continuous pixels, so it is trained on dequantized data.
    """

    kind = "continuous_bernoulli"
    data_variant = "dequantized"

    def __call__(self, logits):
        return tfd.Independent(
            tfd.ContinuousBernoulli(logits=logits), reinterpreted_batch_ndims=1
        )


LIKELIHOODS = {
    "gaussian": GaussianLikelihood,
    "bernoulli": BernoulliLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
}


def make_likelihood(name: str, event_dim: int, **options) -> Likelihood:
    """Build a likelihood by name (``"gaussian"``, ``"bernoulli"``, ``"continuous_bernoulli"``).

    ``options`` go to the Gaussian (``covariance``, ``init_variance``,
    ``min_variance``, ``output_activation``); the others take none.
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    if name == "gaussian":
        return GaussianLikelihood(event_dim, **options)
    if options:
        raise ValueError(f"the {name} likelihood takes no options, got {sorted(options)}")
    return LIKELIHOODS[name]()


# --------------------------------------------------------------------------- priors
class StandardNormalPrior:
    """:math:`p(z) = \\mathcal N(0, I_P)`."""

    kind = "normal"

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim

    def __call__(self) -> tfd.Distribution:
        zeros = tf.zeros([self.latent_dim])
        return tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))

    def spec(self) -> dict:
        return {"prior": self.kind}


class LaplacePrior:
    """:math:`p(z) = \\prod_j \\mathrm{Lap}(z_j; 0, \\tau)`: heavier tails than N(0, I).

    Args:
        latent_dim: P.
        scale: :math:`\\tau`, the scale of every coordinate (variance :math:`2\\tau^2`).
    """

    kind = "laplace"

    def __init__(self, latent_dim: int, scale: float = 1.0):
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"the Laplace prior's scale must be a positive number, got {scale!r}")
        self.latent_dim = latent_dim
        self.scale = float(scale)

    def __call__(self) -> tfd.Distribution:
        zeros = tf.zeros([self.latent_dim])
        return tfd.Independent(tfd.Laplace(loc=zeros, scale=zeros + self.scale),
                               reinterpreted_batch_ndims=1)

    def spec(self) -> dict:
        return {"prior": self.kind, "prior_scale": self.scale}


PRIORS = {"normal": StandardNormalPrior, "laplace": LaplacePrior}


def make_prior(name: str, latent_dim: int, scale: float = 1.0):
    """Build a prior by name: ``"normal"`` (N(0, I)) or ``"laplace"`` (scale ``scale``).

    ``scale`` is the Laplace prior's :math:`\\tau`; the standard normal has no
    scale to set, so it must stay 1 there.
    """
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    if name == "laplace":
        return LaplacePrior(latent_dim, scale)
    if scale != 1.0:
        raise ValueError(f"prior_scale applies to the laplace prior only, not to {name!r}")
    return PRIORS[name](latent_dim)


# --------------------------------------------------------------------------- posteriors
class _LocationScaleFamily:
    """A factorized family whose inference network outputs a location and a raw scale
    parameter per latent dimension (``2 P`` numbers per image)."""

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim
        self.num_params = 2 * latent_dim


class DiagonalNormalPosterior(_LocationScaleFamily):
    """:math:`q(z \\mid x) = \\mathcal N(\\mu, \\mathrm{diag}\\,\\sigma^2)`.

    The inference network outputs ``2 P`` numbers per image: the means, and
    :math:`\\rho` with :math:`\\sigma^2 = \\mathrm{softplus}(\\rho) + 10^{-6}`
    (non-negative by construction; the tiny floor keeps :math:`\\log q` finite in
    float32). Samples are reparameterized: :math:`z = \\mu + \\sigma \\odot \\varepsilon`.
    """

    kind = "normal"
    variance_floor = 1e-6

    def variance(self, raw: tf.Tensor) -> tf.Tensor:
        return tf.nn.softplus(raw) + self.variance_floor

    def __call__(self, params: tf.Tensor) -> tfd.Distribution:
        loc, raw = tf.split(params, 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.sqrt(self.variance(raw)))

    def spec(self) -> dict:
        return {"posterior": self.kind, "variance": "softplus + 1e-6"}


class LaplacePosterior(_LocationScaleFamily):
    """:math:`q(z \\mid x) = \\prod_j \\mathrm{Lap}(z_j; \\mu_j, b_j)`.

    The inference network outputs ``2 P`` numbers per image: the locations, and
    :math:`\\rho` with :math:`b = \\mathrm{softplus}(\\rho) + 10^{-3}` (positive by
    construction, the same floor as the Gaussian family's standard deviation).
    Samples are reparameterized by the inverse CDF (see the module docs), as TFP's
    ``tfd.Laplace`` draws them.
    """

    kind = "laplace"
    scale_floor = 1e-3

    def scale(self, raw: tf.Tensor) -> tf.Tensor:
        return tf.nn.softplus(raw) + self.scale_floor

    def __call__(self, params: tf.Tensor) -> tfd.Distribution:
        loc, raw = tf.split(params, 2, axis=-1)
        return tfd.Independent(tfd.Laplace(loc=loc, scale=self.scale(raw)),
                               reinterpreted_batch_ndims=1)

    def spec(self) -> dict:
        return {"posterior": self.kind, "scale": "softplus + 1e-3"}


POSTERIORS = {"normal": DiagonalNormalPosterior, "laplace": LaplacePosterior}


def make_posterior(name: str, latent_dim: int):
    """Build a variational family by name (``"normal"`` or ``"laplace"``)."""
    if name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r}; choose one of {sorted(POSTERIORS)}")
    return POSTERIORS[name](latent_dim)


# --------------------------------------------------------------------------- sampling
def philox_uniform(shape, seed) -> tf.Tensor:
    r"""Uniform draws in the open interval (0, 1) of ``shape`` (float32), with Philox.

    Philox bits, 23 of each 32, give :math:`(j + 1/2)\,2^{-23}`, exact in float32 and
    symmetric about 1/2 in :math:`[2^{-24}, 1 - 2^{-24}]`: never 0 or 1, so every
    quantile function below is finite. The same seed gives the same numbers eagerly
    and under XLA.
    """
    bits = tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None,
                                       dtype=tf.uint32, alg="philox")
    top = tf.bitwise.right_shift(bits, tf.constant(9, tf.uint32))
    return (tf.cast(top, tf.float32) + 0.5) * 2.0**-23


def standard_normal(shape, seed) -> tf.Tensor:
    """Independent N(0, 1) draws of ``shape`` (float32) from a stateless ``seed``.

    ``philox_uniform`` draws mapped through TFP's standard normal quantile; they lie
    within ±5.3. The same seed gives the same numbers eagerly and under XLA (up to
    the quantile's rounding).
    """
    return tfd.Normal(tf.constant(0.0), tf.constant(1.0)).quantile(philox_uniform(shape, seed))


def standard_gumbel(shape, seed) -> tf.Tensor:
    """Independent standard Gumbel draws, :math:`-\\log(-\\log u)`, of ``shape`` (float32).

    ``philox_uniform`` draws mapped through TFP's Gumbel(0, 1) quantile: the noise of
    the Gumbel-softmax relaxation (``discrete``), drawn as fast under XLA as the
    Gaussian noise above.
    """
    return tfd.Gumbel(tf.constant(0.0), tf.constant(1.0)).quantile(philox_uniform(shape, seed))


def laplace_from_uniform(loc, scale, u) -> tf.Tensor:
    r"""The inverse-CDF reparameterization of :math:`\mathrm{Lap}(\mu, b)`.

    Args:
        loc: :math:`\mu`.
        scale: :math:`b > 0`.
        u: uniform draws :math:`\varepsilon` in the open interval (0, 1).

    Returns:
        :math:`z = \mu - b\,\mathrm{sign}(\varepsilon - \frac12)\,
        \log(1 - 2|\varepsilon - \frac12|)`, Laplace distributed and differentiable
        in ``loc`` and ``scale`` (:math:`\partial z/\partial b = (z - \mu)/b`).
        ``log1p`` keeps the tails accurate for :math:`\varepsilon` near 0 and 1.
    """
    loc = tf.convert_to_tensor(loc, tf.float32)
    scale = tf.convert_to_tensor(scale, tf.float32)
    centred = tf.convert_to_tensor(u, tf.float32) - 0.5
    return loc - scale * tf.sign(centred) * tf.math.log1p(-2.0 * tf.abs(centred))


def has_standard_normal_noise(q: tfd.Distribution) -> bool:
    """Whether ``q`` is TFP's transform of standard normal noise (``sample_from_noise`` applies)."""
    return isinstance(q, tfd.MultivariateNormalLinearOperator)


def sample_from_noise(q: tfd.Distribution, noise: tf.Tensor) -> tf.Tensor:
    r"""Reparameterized samples of ``q`` from standard normal ``noise``.

    Args:
        q: a Gaussian family built on a standard normal (``MultivariateNormalDiag``,
            ``...TriL``, any ``MultivariateNormalLinearOperator``).
        noise: N(0, I) draws of shape ``[..., *q.batch_shape, *q.event_shape]``,
            e.g. from ``standard_normal``.

    Returns:
        ``q.bijector.forward(noise)``, TFP's own map from its base noise to
        samples (:math:`\mu + L\,\varepsilon`), differentiable in q's parameters.
    """
    if not has_standard_normal_noise(q):
        raise TypeError(f"sample_from_noise needs a Gaussian built on standard normal noise, "
                        f"got {type(q).__name__}; use q.sample instead")
    return q.bijector.forward(noise)


# --------------------------------------------------------------------------- KL
def has_analytic_kl(q: tfd.Distribution, p: tfd.Distribution) -> bool:
    """Whether TFP has a closed-form KL registered for this pair of distributions."""
    try:
        tfd.kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def kl_divergence(q: tfd.Distribution, p: tfd.Distribution, z: tf.Tensor | None = None):
    """KL(q ‖ p): TFP's closed form where registered, else the one-sample estimate at ``z``.

    Args:
        q: the variational posterior, batch shape ``[B]``.
        p: the prior.
        z: samples from ``q`` (shape ``[S, B, P]``), needed only when no closed form exists.

    Returns:
        The KL per example: shape ``[B]`` (closed form) or ``[S, B]`` (Monte Carlo).
    """
    try:
        return tfd.kl_divergence(q, p)
    except NotImplementedError:
        if z is None:
            raise ValueError(
                f"no closed-form KL for {type(q).__name__} against {type(p).__name__}: "
                "pass samples z for a Monte Carlo estimate"
            ) from None
        return q.log_prob(z) - p.log_prob(z)
