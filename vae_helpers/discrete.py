r"""A VAE with discrete latent variables: M categorical variables with K classes each.

The code of an image is :math:`z = (z_1, \dots, z_M)`, each :math:`z_m` a one-hot
vector of length K; the decoder reads the M one-hot vectors side by side (an
``M * K`` input). The prior is uniform, :math:`p(z_m = k) = 1/K`, and the
amortized posterior is :math:`q(z \mid x) = \prod_m \mathrm{Cat}(z_m;\ \pi_m(x))`
with the class probabilities :math:`\pi_m(x)` a softmax of the inference network's
``M * K`` outputs. All of them are TFP distributions (``tfd.OneHotCategorical``,
``tfd.RelaxedOneHotCategorical``, ``tfd.Independent``).

What changes against continuous z
---------------------------------
The continuous VAE used continuity twice. (1) The reparameterization trick
:math:`z = \mu + \sigma \odot \varepsilon` moves the gradient through the sample;
a categorical sample is a step function of the probabilities, with gradient zero
almost everywhere. (2) The KL term came in closed form from the Gaussians. The
second is easy: against the uniform prior,

.. math::

    \mathrm{KL}(q \,\|\, p) = \sum_m \sum_k \pi_{mk} \log \pi_{mk} + M \log K,

a closed form again (TFP registers the categorical KL). For the first there are
two ways, both here (``estimator``):

``"exact"``
    Sum over all :math:`K^M` codes instead of sampling:
    :math:`\mathbb E_q[\log p(x \mid z)] = \sum_z q(z \mid x) \log p(x \mid z)`.
    The ELBO and its gradient are then exact, with no sampling noise at all: the
    gold standard, possible only for small codes (here at most ``MAX_CODES``).
``"relaxed"``
    The Gumbel-softmax or Concrete relaxation (Jang, Gu & Poole, 2017; Maddison,
    Mnih & Teh, 2017): :math:`\tilde z_m = \mathrm{softmax}((\log \pi_m + g_m)/\tau)`
    with Gumbel noise :math:`g_m`, a reparameterized sample on the simplex that
    approaches a one-hot sample of :math:`\mathrm{Cat}(\pi_m)` as the temperature
    :math:`\tau \to 0`. Training ascends
    :math:`\mathbb E[\log p(x \mid \tilde z)] - \mathrm{KL}(q \,\|\, p)` (the
    categorical KL above), with :math:`\tau` annealed from
    ``initial_temperature`` to ``final_temperature`` over ``anneal_epochs``
    epochs (exponentially, then constant): a biased but low-variance gradient.

``"reinforce"``
    The score-function estimator (Williams, 1992), unbiased: with S one-hot samples
    :math:`z_s \sim q` and :math:`f(z) = \log p(x \mid z)`,
    :math:`\nabla_\phi \mathbb E_q[f] \approx \frac1S \sum_s (f(z_s) - b_s)\,
    \nabla_\phi \log q(z_s \mid x)`, with the *leave-one-out* baseline
    :math:`b_s = \frac1{S-1} \sum_{j \ne s} f(z_j)` (Kool, van Hoof & Welling, 2019),
    which is independent of :math:`z_s` and so adds no bias; it needs
    :math:`S \ge 2` (``TrainingSettings(n_samples=...)``). The decoder's gradient is
    the plain Monte Carlo one, :math:`\frac1S \sum_s \nabla_\theta f(z_s)`.
    ``estimator_terms(..., baseline="none")`` gives the estimator without a baseline
    (:math:`b_s = 0`), to show what the baseline buys.
``"straight_through"``
    The straight-through Gumbel-softmax estimator (Jang, Gu & Poole, 2017, section
    2.2): the forward pass uses the one-hot sample :math:`h_m =
    \mathrm{onehot}(\arg\max_k (\log \pi_{mk} + g_{mk}))`, an exact sample of
    :math:`\mathrm{Cat}(\pi_m)` (the Gumbel-max trick), and the backward pass the
    gradient of the relaxed sample :math:`\tilde z_m` of the same noise, as
    :math:`h + \tilde z - \mathrm{stop\_gradient}(\tilde z)`. Its reconstruction
    term is an unbiased estimate and so is its gradient for the decoder (evaluated at
    one-hot codes); its gradient for the encoder is biased, at any temperature.

In each, the KL term is closed form and its gradient exact; the training objective
is ``reconstruction - beta * kl`` (``beta``, default 1, as in ``model.VAE``), where the
reconstruction term's *value* is the estimator's Monte Carlo estimate (one-hot
samples for ``reinforce`` and ``straight_through``) and its *gradient* is the
estimator's. ``estimator_terms`` computes these terms for any estimator on a model,
whatever the estimator it trains with.

Comparing gradient estimators
-----------------------------
``gradient_draws`` computes an estimator's gradient of the batch's mean objective
with respect to given variables over many independent draws (draw i uses the seed
``seeding.stateless_seed(seed, i)``), and ``gradient_moments`` summarises them: per
parameter, the mean, the sample variance (``ddof=1``) and the standard error of the
mean; as scalars, the mean variance over parameters and the total variance (their
sum, the expected squared distance of one draw from the mean gradient).
``compare_estimators`` puts several estimators side by side with each one's
distance from the exact gradient. The exact gradient, by enumeration, has variance
0; the score function is unbiased but noisy (much noisier without a baseline); the
relaxed and straight-through estimators have a low variance and a bias
(``tests/test_estimators.py`` measures both on a small model).

Whatever the training estimator, the ELBO this model reports (``elbo_terms``, so
the test ELBO of ``training.fit`` and ``evaluate``) is the true ELBO of the discrete
model: exact by enumeration when the code is small enough, else a Monte Carlo
estimate with one-hot samples of q. For enumerable codes ``exact_log_likelihood``
gives :math:`\log p(x) = \log \sum_z p(x \mid z)\, p(z)` itself. (The training
columns of a relaxed model's history hold the relaxed objective, which is not a
bound on :math:`\log p(x)`.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from vae_helpers import distributions as dist
from vae_helpers.backend import tf, tfd
from vae_helpers.model import INPUT_DIM, MLP, VAE, as_units, check_beta
from vae_helpers.seeding import SALT_INIT, stateless_seed

#: Codes summed over by the exact estimator at most (K ** M).
MAX_CODES = 1024

#: How the gradient of the reconstruction term is estimated (see the module's docstring).
ESTIMATORS = ("exact", "relaxed", "reinforce", "straight_through")

#: Baselines of the score-function estimator: leave-one-out over the samples, or none.
BASELINES = ("loo", "none")


class UniformCategoricalPrior:
    """The uniform prior :math:`p(z) = \\prod_m \\mathrm{Cat}(z_m; 1/K, \\dots, 1/K)`.

    One-hot codes, event shape ``[M, K]``.
    """

    kind = "categorical"

    def __init__(self, num_variables: int, num_classes: int):
        self.num_variables, self.num_classes = num_variables, num_classes

    def __call__(self) -> tfd.Distribution:
        logits = tf.zeros([self.num_variables, self.num_classes])
        return tfd.Independent(tfd.OneHotCategorical(logits=logits, dtype=tf.float32),
                               reinterpreted_batch_ndims=1)

    def spec(self) -> dict:
        return {"prior": "uniform categorical"}


class CategoricalPosterior:
    """:math:`q(z \\mid x) = \\prod_m \\mathrm{Cat}(z_m; \\mathrm{softmax}(\\ell_m))`.

    The inference network's ``M * K`` outputs are the logits :math:`\\ell`.
    """

    kind = "categorical"

    def __init__(self, num_variables: int, num_classes: int):
        self.num_variables, self.num_classes = num_variables, num_classes
        self.num_params = num_variables * num_classes

    def logits(self, params: tf.Tensor) -> tf.Tensor:
        """The network's outputs ``[..., M * K]`` as logits ``[..., M, K]``."""
        shape = tf.concat([tf.shape(params)[:-1], [self.num_variables, self.num_classes]], 0)
        return tf.reshape(params, shape)

    def __call__(self, params: tf.Tensor) -> tfd.Distribution:
        return tfd.Independent(tfd.OneHotCategorical(logits=self.logits(params),
                                                     dtype=tf.float32),
                               reinterpreted_batch_ndims=1)

    def relaxed(self, params: tf.Tensor, temperature) -> tfd.Distribution:
        """The Gumbel-softmax relaxation of ``self(params)`` at ``temperature``."""
        return tfd.Independent(tfd.RelaxedOneHotCategorical(temperature,
                                                            logits=self.logits(params)),
                               reinterpreted_batch_ndims=1)

    def relaxed_sample(self, params: tf.Tensor, temperature, n: int, seed) -> tf.Tensor:
        """``n`` draws of ``relaxed(params, temperature)``: ``[n, ..., M, K]``, reparameterized.

        The map TFP's ``RelaxedOneHotCategorical`` samples with,
        :math:`\\mathrm{softmax}((\\ell + g) / \\lambda)` with standard Gumbel noise g,
        applied to noise from ``distributions.standard_gumbel`` (Philox: TFP's own
        sampler draws with the algorithm that is slow under XLA on a CPU).
        """
        logits = self.logits(params)
        shape = tf.concat([[n], tf.shape(logits)], 0)
        gumbel = dist.standard_gumbel(shape, seed)
        return tf.nn.softmax((logits + gumbel) / temperature, axis=-1)

    def spec(self) -> dict:
        return {"posterior": self.kind}


def all_codes(num_variables: int, num_classes: int) -> np.ndarray:
    """Every code as one-hot rows: ``[K ** M, M, K]`` float32, in lexicographic order."""
    eye = np.eye(num_classes, dtype=np.float32)
    combos = itertools.product(range(num_classes), repeat=num_variables)
    return np.stack([eye[list(c)] for c in combos])


class CategoricalVAE(VAE):
    """A VAE whose latent code is ``num_variables`` one-hot vectors of ``num_classes`` classes.

    The networks are the homework's (one hidden layer of 512 ReLU units by default,
    weights from N(0, init_stddev²), zero biases); only the code differs. It trains
    with ``training.fit`` like ``VAE`` and is evaluated like it (``evaluate.evaluate``).

    Args:
        num_variables: M, the number of categorical variables.
        num_classes: K, the classes of each.
        hidden_units: hidden widths of both networks.
        likelihood: ``"bernoulli"`` (binarized digits, default), ``"gaussian"`` or
            ``"continuous_bernoulli"``.
        estimator: the training estimator: ``"exact"`` (sum over all codes; needs
            ``K ** M <= MAX_CODES``), ``"relaxed"`` (Gumbel-softmax with an annealed
            temperature), ``"reinforce"`` (score function with the leave-one-out
            baseline; needs ``n_samples >= 2``) or ``"straight_through"``
            (straight-through Gumbel-softmax, annealed as ``"relaxed"``).
        initial_temperature, final_temperature, anneal_epochs: the relaxed estimator's
            temperature, ``initial * (final / initial) ** min(epoch / anneal_epochs, 1)``.
        init_stddev: standard deviation of the initial weights.
        input_dim: pixels per image.
        covariance: Gaussian likelihood only: ``"scalar"`` or ``"diagonal"``.
        seed: seed of the weight initialisation.
        beta: the weight of the KL term in the training objective (default 1, the
            ELBO), as in ``model.VAE``; the reported ELBO is the true one whatever β.
    """

    latent_type = "categorical"

    def __init__(
        self,
        num_variables: int = 1,
        num_classes: int = 10,
        hidden_units: int | Sequence[int] = 512,
        likelihood: str = "bernoulli",
        estimator: str = "exact",
        initial_temperature: float = 1.0,
        final_temperature: float = 0.5,
        anneal_epochs: float = 10.0,
        init_stddev: float = 0.01,
        input_dim: int = INPUT_DIM,
        covariance: str = "scalar",
        seed: int = 0,
        beta: float = 1.0,
        name: str | None = None,
    ):
        tf.Module.__init__(self, name=name)
        for what, value in (("num_variables", num_variables), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, "
                             f"got {estimator!r}")
        codes = num_classes ** num_variables
        if estimator == "exact" and codes > MAX_CODES:
            raise ValueError(f"the exact estimator sums over all {num_classes}**{num_variables}"
                             f" = {codes:,} codes, more than {MAX_CODES}: use "
                             "estimator='relaxed', or fewer variables or classes")
        temperatures = (initial_temperature, final_temperature)
        if not all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0
                   for t in temperatures):
            raise ValueError(f"temperatures must be positive numbers, got {temperatures}")
        if final_temperature > initial_temperature:
            raise ValueError("final_temperature must not exceed initial_temperature: "
                             "the temperature is annealed downwards")
        if not (isinstance(anneal_epochs, (int, float)) and anneal_epochs > 0):
            raise ValueError(f"anneal_epochs must be a positive number, got {anneal_epochs!r}")
        if not init_stddev > 0:
            raise ValueError(f"init_stddev must be positive, got {init_stddev!r}")
        units = as_units(hidden_units)
        self.num_variables, self.num_classes = int(num_variables), int(num_classes)
        self.latent_dim = self.num_variables * self.num_classes  # the decoder's input width
        self.input_dim = int(input_dim)
        self.hidden_units = units
        self.init_stddev = float(init_stddev)
        self.seed = int(seed)
        self.beta = check_beta(beta)
        self.estimator = estimator
        self.initial_temperature = float(initial_temperature)
        self.final_temperature = float(final_temperature)
        self.anneal_epochs = float(anneal_epochs)
        options = {"covariance": covariance} if likelihood == "gaussian" else {}
        self.likelihood = dist.make_likelihood(likelihood, self.input_dim, **options)
        self.prior = UniformCategoricalPrior(self.num_variables, self.num_classes)
        self.posterior = CategoricalPosterior(self.num_variables, self.num_classes)
        self.encoder = MLP([self.input_dim, *units, self.posterior.num_params], init_stddev,
                           stateless_seed(seed, SALT_INIT, 0), name="encoder")
        self.decoder = MLP([self.latent_dim, *units, self.input_dim], init_stddev,
                           stateless_seed(seed, SALT_INIT, 1), name="decoder")
        self.enumerable = codes <= MAX_CODES
        self._config = dict(
            latent_type=self.latent_type, num_variables=self.num_variables,
            num_classes=self.num_classes, hidden_units=list(units), likelihood=likelihood,
            estimator=estimator, initial_temperature=self.initial_temperature,
            final_temperature=self.final_temperature, anneal_epochs=self.anneal_epochs,
            init_stddev=self.init_stddev, input_dim=self.input_dim, covariance=covariance,
            seed=self.seed, beta=self.beta,
        )

    @classmethod
    def from_config(cls, config: dict) -> CategoricalVAE:
        config = dict(config)
        config.pop("latent_type", None)
        return cls(**config)

    # ------------------------------------------------------------------ distributions
    def generate(self, z) -> tfd.Distribution:
        """p(x | z) for one-hot codes ``[..., M, K]`` (or relaxed ones on the simplex)."""
        z = tf.convert_to_tensor(z, tf.float32)
        flat = tf.reshape(z, tf.concat([tf.shape(z)[:-2], [self.latent_dim]], 0))
        return self.likelihood(self.decoder(flat))

    def temperature(self, epoch) -> tf.Tensor:
        """The relaxation's temperature after ``epoch`` epochs of training (a float)."""
        progress = tf.minimum(tf.cast(epoch, tf.float32) / self.anneal_epochs, 1.0)
        ratio = self.final_temperature / self.initial_temperature
        return self.initial_temperature * tf.pow(ratio, progress)

    def codes(self) -> tf.Tensor:
        """Every code, ``[K ** M, M, K]`` (for enumerable models only)."""
        if not self.enumerable:
            raise ValueError(f"{self.num_classes}**{self.num_variables} codes are too many "
                             "to enumerate")
        return tf.constant(all_codes(self.num_variables, self.num_classes))

    def _enumerate(self, x):
        """``log p(x | z)`` and ``log q(z | x)`` for every code z: two ``[C, B]`` tensors."""
        x = tf.convert_to_tensor(x, tf.float32)
        codes = self.codes()[:, None]                                         # [C, 1, M, K]
        return self.generate(codes).log_prob(x), self.infer(x).log_prob(codes)

    # ------------------------------------------------------------------ objectives
    def elbo_terms(self, x, n_samples: int = 1, seed=None):
        """The true ELBO of the discrete model and its two terms, each ``[B]``.

        Exact (a sum over all codes, ``n_samples`` and ``seed`` unused) when the
        code is enumerable; otherwise the reconstruction term is a Monte Carlo
        estimate with ``n_samples`` one-hot samples of q. The KL is closed form.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        q = self.infer(x)
        kl = dist.kl_divergence(q, self.prior())
        if self.enumerable:
            log_lik, log_q = self._enumerate(x)
            reconstruction = tf.reduce_sum(tf.exp(log_q) * log_lik, axis=0)
        else:
            z = q.sample(n_samples, seed=None if seed is None else stateless_seed(seed))
            reconstruction = tf.reduce_mean(self.generate(z).log_prob(x), axis=0)
        return reconstruction - kl, reconstruction, kl

    def training_terms(self, x, n_samples: int = 1, seed=None, epoch=None):
        """What ``training.fit`` ascends: ``(reconstruction - beta * kl, reconstruction, kl)``,
        each ``[B]``, with the reconstruction term of the model's ``estimator``
        (``estimator_terms``).

        ``epoch`` (training progress in epochs) sets the temperature of the relaxed and
        straight-through estimators; ``None`` means the start of training.
        """
        temperature = self.temperature(0.0 if epoch is None else epoch)
        return estimator_terms(self, x, self.estimator, n_samples, seed, temperature)

    def exact_log_likelihood(self, x) -> tf.Tensor:
        """:math:`\\log p(x) = \\log \\sum_z p(x \\mid z) p(z)` of each image ``[B]`` (nats)."""
        log_lik, _ = self._enumerate(x)
        return tf.reduce_logsumexp(log_lik, axis=0) - self.num_variables * math.log(
            self.num_classes)

    def iwae_log_likelihood(self, x, k: int, seed=0) -> tf.Tensor:
        """The importance-weighted bound of each image ``[B]`` (nats), for enumerable codes.

        With k samples from q over C possible codes, only how often each code is drawn
        matters: the counts are Multinomial(k, q(. | x)), and the estimate is
        :math:`\\log \\frac1k \\sum_c n_c\\, p(x, c) / q(c \\mid x)`, the same random
        variable as the bound of Burda et al. (2016) drawn sample by sample, for the cost
        of C decoder passes instead of k.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        log_lik, log_q = self._enumerate(x)                                    # [C, B]
        log_w = log_lik - self.num_variables * math.log(self.num_classes) - log_q
        counts = tfd.Multinomial(total_count=float(k), logits=tf.transpose(log_q)).sample(
            seed=stateless_seed(seed))                                          # [B, C]
        log_counts = tf.where(counts > 0, tf.math.log(tf.maximum(counts, 1.0)), -np.inf)
        return tf.reduce_logsumexp(log_counts + tf.transpose(log_w), axis=1) - math.log(k)

    # ------------------------------------------------------------------ images
    def sample(self, n: int, seed=None) -> tf.Tensor:
        """``n`` images: a code from the uniform prior, then the mean of p(x | z)."""
        z = self.prior().sample(n, seed=None if seed is None else stateless_seed(seed))
        return self.generate(z).mean()

    def reconstruct(self, x) -> tf.Tensor:
        """The mean of p(x | z) at the most probable code of q(z | x)."""
        return self.generate(self.infer(x).distribution.mode()).mean()

    def kl_per_variable(self, x) -> np.ndarray:
        """KL(q(z_m | x) || uniform) of each variable for each image: ``[B, M]`` nats.

        They sum to the KL term of the ELBO; a variable whose KL stays near 0 for every
        image carries no information about x (it is unused).
        """
        q = self.infer(tf.convert_to_tensor(x, tf.float32)).distribution   # batch [B, M]
        return dist.kl_divergence(q, self.prior().distribution).numpy()

    def assign(self, x) -> np.ndarray:
        """The most probable class of each variable for each image: ``[B, M]`` ints."""
        logits = self.posterior.logits(self.encoder(tf.convert_to_tensor(x, tf.float32)))
        return tf.argmax(logits, axis=-1, output_type=tf.int32).numpy()

    def spec(self) -> dict:
        return {
            "input_dim": self.input_dim,
            "latent_type": self.latent_type,
            "latent_dim": self.latent_dim,
            "num_variables": self.num_variables,
            "num_classes": self.num_classes,
            "estimator": self.estimator,
            "hidden_units": list(self.hidden_units),
            "hidden_activation": "relu",
            "output_activation": self.likelihood.spec().get("output_activation", "sigmoid"),
            **self.likelihood.spec(),
            **self.prior.spec(),
            **self.posterior.spec(),
            "init_stddev": self.init_stddev,
            "num_parameters": self.num_parameters,
        }


# --------------------------------------------------------------------------- estimators
def _check_estimator(model: CategoricalVAE, estimator: str, n_samples: int,
                     baseline: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if estimator == "exact" and not model.enumerable:
        raise ValueError(f"the exact estimator sums over all {model.num_classes}**"
                         f"{model.num_variables} codes, more than {MAX_CODES}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
            or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if estimator == "reinforce" and baseline == "loo" and n_samples < 2:
        raise ValueError("the reinforce estimator's leave-one-out baseline needs at least 2 "
                         "samples of z per image: set n_samples >= 2 (or baseline='none')")


def estimator_terms(model: CategoricalVAE, x, estimator: str, n_samples: int = 1, seed=None,
                    temperature=None, baseline: str = "loo"):
    r"""``(reconstruction - model.beta * kl, reconstruction, kl)`` of ``estimator``, each ``[B]``.

    The KL is closed form. The reconstruction term of ``"exact"`` is the sum over all
    codes (``n_samples``, ``seed`` unused); of ``"reinforce"`` and
    ``"straight_through"`` the mean of :math:`\log p(x \mid z)` over ``n_samples``
    one-hot samples of q (Gumbel-max), with the estimator's gradient; of
    ``"relaxed"`` the same over relaxed samples. See the module's docstring.

    Args:
        model: a ``CategoricalVAE`` (its own ``estimator`` is not used).
        x: images ``[B, D]``.
        estimator: one of ``ESTIMATORS``.
        n_samples: samples of z per image.
        seed: an int or a stateless seed; ``None`` draws one from TF's global generator.
        temperature: of ``"relaxed"`` and ``"straight_through"`` (default: the model's
            ``initial_temperature``).
        baseline: ``"reinforce"`` only: ``"loo"`` (leave-one-out, needs
            ``n_samples >= 2``) or ``"none"``.
    """
    _check_estimator(model, estimator, n_samples, baseline)
    x = tf.convert_to_tensor(x, tf.float32)
    if estimator == "exact":
        _, reconstruction, kl = model.elbo_terms(x)
        return reconstruction - model.beta * kl, reconstruction, kl
    params = model.encoder(x)
    q = model.posterior(params)
    kl = dist.kl_divergence(q, model.prior())
    temperature = model.initial_temperature if temperature is None else temperature
    if seed is None:  # as TFP's samplers do without a seed: from the global generator
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    else:
        seed = stateless_seed(seed)
    if estimator == "relaxed":
        z = model.posterior.relaxed_sample(params, temperature, n_samples, seed)
        reconstruction = tf.reduce_mean(model.generate(z).log_prob(x), axis=0)
        return reconstruction - model.beta * kl, reconstruction, kl
    logits = model.posterior.logits(params)                                   # [B, M, K]
    noise = dist.standard_gumbel(tf.concat([[n_samples], tf.shape(logits)], 0), seed)
    perturbed = logits + noise                                                # [S, B, M, K]
    hard = tf.one_hot(tf.argmax(perturbed, axis=-1), model.num_classes)       # Gumbel-max
    if estimator == "straight_through":
        soft = tf.nn.softmax(perturbed / temperature, axis=-1)
        z = hard + soft - tf.stop_gradient(soft)      # value: hard; gradient: the relaxed one
        reconstruction = tf.reduce_mean(model.generate(z).log_prob(x), axis=0)
        return reconstruction - model.beta * kl, reconstruction, kl
    # reinforce: f + stop_gradient(f - b) * (log q - stop_gradient(log q)) has the value f
    # and the gradient  grad f + (f - b) grad log q
    f = model.generate(hard).log_prob(x)                                      # [S, B]
    log_q = q.log_prob(hard)                                                  # [S, B]
    if baseline == "loo":
        b = (tf.reduce_sum(f, axis=0, keepdims=True) - f) / (n_samples - 1)
    else:
        b = tf.zeros_like(f)
    score = log_q - tf.stop_gradient(log_q)
    reconstruction = tf.reduce_mean(f + tf.stop_gradient(f - b) * score, axis=0)
    return reconstruction - model.beta * kl, reconstruction, kl


def gradient_draws(model: CategoricalVAE, x, estimator: str, n_draws: int = 1000,
                   variables=None, n_samples: int = 1, temperature=None,
                   baseline: str = "loo", seed: int = 0) -> np.ndarray:
    """``n_draws`` independent draws of an estimator's gradient: ``[n_draws, P]`` float64.

    Each row is the gradient of the mean over ``x`` of ``estimator_terms``' objective
    with respect to ``variables`` (default: ``model.trainable_variables``, which
    ``tf.Module`` orders by attribute name: the decoder's, then the encoder's),
    flattened and concatenated in their order; draw i uses the seed
    ``stateless_seed(seed, i)``. The other arguments are ``estimator_terms``'.
    """
    variables = list(model.trainable_variables if variables is None else variables)
    if not variables:
        raise ValueError("no variables to differentiate with respect to")
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}")
    _check_estimator(model, estimator, n_samples, baseline)
    x = tf.convert_to_tensor(x, tf.float32)

    @tf.function
    def one_draw(draw_seed):
        with tf.GradientTape() as tape:
            objective = estimator_terms(model, x, estimator, n_samples, draw_seed,
                                        temperature, baseline)[0]
            loss = tf.reduce_mean(objective)
        grads = tape.gradient(loss, variables)
        return tf.concat([tf.reshape(tf.zeros_like(v) if g is None else g, [-1])
                          for g, v in zip(grads, variables, strict=True)], 0)

    return np.stack([one_draw(stateless_seed(seed, i)).numpy() for i in range(n_draws)]
                    ).astype(np.float64)


def gradient_moments(model: CategoricalVAE, x, estimator: str, n_draws: int = 1000,
                     **options) -> dict:
    """The mean and variance of an estimator's gradient over ``n_draws`` draws.

    Args:
        model, x, estimator, n_draws: as ``gradient_draws``.
        **options: ``gradient_draws``' ``variables``, ``n_samples``, ``temperature``,
            ``baseline``, ``seed``.

    Returns:
        A dict: ``estimator``; ``n_draws``; per parameter (``[P]`` arrays, flattened as
        ``gradient_draws``): ``mean``, ``variance`` (sample variance, ``ddof=1``) and
        ``standard_error`` (of the mean, ``sqrt(variance / n_draws)``); as scalars,
        ``mean_variance`` (over parameters) and ``total_variance`` (their sum).
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 2:
        raise ValueError(f"a variance needs n_draws >= 2, got {n_draws!r}")
    draws = gradient_draws(model, x, estimator, n_draws, **options)
    variance = draws.var(axis=0, ddof=1)
    return {"estimator": estimator, "n_draws": int(n_draws), "mean": draws.mean(axis=0),
            "variance": variance, "standard_error": np.sqrt(variance / n_draws),
            "mean_variance": float(variance.mean()), "total_variance": float(variance.sum())}


def compare_estimators(model: CategoricalVAE, x, estimators=None, n_draws: int = 1000,
                       **options) -> list[dict]:
    """Several estimators' gradients side by side, each against the exact one.

    Args:
        model, x, n_draws, **options: as ``gradient_moments`` (the same ``options`` for
            every estimator).
        estimators: names of ``ESTIMATORS``, or ``(name, baseline)`` pairs for the
            score function (default: exact, reinforce with and without the baseline,
            straight-through, relaxed; the exact one needs an enumerable code).

    Returns:
        One dict per estimator: ``estimator``, ``baseline`` (``None`` but for
        reinforce), ``mean_variance``, ``total_variance``, and ``bias_norm``, the
        Euclidean distance of the mean gradient from the exact gradient (it includes
        Monte Carlo error of about ``sqrt(total_variance / n_draws)``).
    """
    if estimators is None:
        estimators = ["exact", ("reinforce", "loo"), ("reinforce", "none"),
                      "straight_through", "relaxed"]
    options.setdefault("n_samples", 2)
    exact = gradient_draws(model, x, "exact", 1, **{k: v for k, v in options.items()
                                                       if k != "baseline"})[0]
    rows = []
    for item in estimators:
        name, baseline = (item, "loo") if isinstance(item, str) else item
        moments = gradient_moments(model, x, name, n_draws, **{**options, "baseline": baseline})
        rows.append({"estimator": name, "baseline": baseline if name == "reinforce" else None,
                     "mean_variance": moments["mean_variance"],
                     "total_variance": moments["total_variance"],
                     "bias_norm": float(np.linalg.norm(moments["mean"] - exact))})
    return rows


# --------------------------------------------------------------------------- pictures
def category_examples(model: CategoricalVAE, x, n_examples: int = 9,
                      variable: int = 0) -> np.ndarray:
    """One row per class of ``variable``: the decoded class, then test images assigned to it.

    Row k starts with the mean of p(x | z) for the code whose ``variable`` is class k
    (the other variables, if any, at their class 0), followed by the first
    ``n_examples`` images of ``x`` whose most probable class is k (blank tiles when
    fewer are assigned to it).

    Returns:
        ``[K * (1 + n_examples), D]`` pixel values, ready for ``plots.plot_grid``.
    """
    x = np.asarray(x, np.float32)
    k, m = model.num_classes, model.num_variables
    codes = np.zeros((k, m, k), np.float32)
    codes[:, :, 0] = 1.0
    codes[:, variable, :] = np.eye(k, dtype=np.float32)
    prototypes = np.asarray(model.decode(codes))
    assigned = model.assign(x)[:, variable]
    rows = []
    for c in range(k):
        members = x[assigned == c][:n_examples]
        blank = np.ones((n_examples - len(members), x.shape[1]), np.float32)
        rows.append(np.concatenate([prototypes[c:c + 1], members, blank]))
    return np.concatenate(rows)


def variable_sweeps(model: CategoricalVAE, base_code, variables=None) -> np.ndarray:
    """What each variable does: row j decodes a base code with variable j set to each class.

    With one base code every row starts from the same image, and the rows of a model
    whose variables each change little look alike; with one base code per row (e.g.
    the codes of test digits of different labels) each row shows the variable acting
    on another digit.

    Args:
        model: the model.
        base_code: ``[M]`` class indices (e.g. ``model.assign(x)[0]``), the base of every
            row, or ``[len(variables), M]``, one base per row (``model.assign(x)``).
        variables: the variables to sweep, one row each (default: all M).

    Returns:
        ``[len(variables) * K, D]`` mean images, row by row.
    """
    k, m = model.num_classes, model.num_variables
    variables = list(range(m) if variables is None else variables)
    base = np.asarray(base_code, np.int64)
    if base.ndim == 1:
        base = np.broadcast_to(base, (len(variables), base.size))
    if (base.ndim != 2 or base.shape != (len(variables), m) or base.min() < 0
            or base.max() >= k):
        raise ValueError(f"base_code must hold {m} class indices in 0..{k - 1}, once or "
                         f"once per swept variable ({len(variables)}), got an array of shape "
                         f"{np.shape(base_code)}")
    codes = []
    for j, row_base in zip(variables, base, strict=True):
        for c in range(k):
            classes = row_base.copy()
            classes[j] = c
            codes.append(np.eye(k, dtype=np.float32)[classes])
    return np.asarray(model.decode(np.stack(codes)))


# --------------------------------------------------------------------------- clusters
def contingency_table(labels, clusters, num_labels: int = 10,
                      num_clusters: int | None = None) -> np.ndarray:
    """Counts ``[num_labels, num_clusters]``: images of each label in each cluster."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    clusters = np.asarray(clusters, dtype=np.int64).ravel()
    if labels.shape != clusters.shape:
        raise ValueError(f"labels and clusters differ in length: {labels.size} vs "
                         f"{clusters.size}")
    num_clusters = int(clusters.max()) + 1 if num_clusters is None else num_clusters
    table = np.zeros((num_labels, num_clusters), dtype=np.int64)
    np.add.at(table, (labels, clusters), 1)
    return table


def best_match_accuracy(table) -> tuple[float, dict]:
    """Clustering accuracy under the best one-to-one matching of clusters to labels.

    The matching maximises the images whose cluster is matched to their label
    (the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``); clusters
    left unmatched (more clusters than labels) count as errors.

    Args:
        table: a ``contingency_table``, labels by clusters.

    Returns:
        ``(accuracy, {cluster: label})``.
    """
    from scipy.optimize import linear_sum_assignment

    table = np.asarray(table)
    rows, cols = linear_sum_assignment(table, maximize=True)
    accuracy = float(table[rows, cols].sum() / table.sum())
    return accuracy, {int(c): int(r) for r, c in zip(rows, cols, strict=True)}
