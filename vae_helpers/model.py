r"""The variational autoencoder of the homework, as a ``tf.Module``.

Generative model: :math:`z \sim p(z)`, :math:`x \mid z \sim p_\Theta(x \mid z)`
with parameters from the generative network :math:`f(z; w)`.
Inference model: :math:`q_\phi(z \mid x)` with parameters from the inference
network :math:`g(x; \phi)` (amortized inference: one network for all images).

The evidence lower bound for one image, estimated with S reparameterized samples
:math:`z_s = \mu_\phi(x) + \sigma_\phi(x) \odot \varepsilon_s`,
:math:`\varepsilon_s \sim \mathcal N(0, I)`:

.. math::

    \mathcal L(x) = \mathbb E_{q_\phi(z \mid x)}[\log p_\Theta(x \mid z)]
                    - \mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))
    \approx \frac1S \sum_{s=1}^S \log p_\Theta(x \mid z_s)
                    - \mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z)),

with the KL in closed form when TFP has one (Kingma & Welling, 2014, eq. 10).

A fixed KL weight β (``VAE(beta=...)``, default 1) changes only what training
ascends, :math:`\mathbb E_q[\log p_\Theta(x \mid z)] - \beta\,\mathrm{KL}` per image
(``training_terms``; the β-VAE of Higgins et al., 2017). β is a constructor argument,
so it is in ``config`` and a run's ``config.json`` records it. Everything that reports
an ELBO (``elbo_terms``, ``compute_elbo``, the test columns of the training history,
``evaluate``) reports the true ELBO, β = 1, whatever β the model trains with.
The homework's defaults: 784 inputs, one hidden layer of 512 ReLU units in both
networks, P = 2 latent dimensions, weights drawn from a normal with standard
deviation 0.01 (the "N(0, 0.01)" of Kingma & Welling's reference code, read as a
standard deviation), biases zero, a sigmoid output for the decoder's mean, and
non-negative variances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vae_helpers import distributions as dist
from vae_helpers.backend import tf, tfd
from vae_helpers.seeding import SALT_INIT, stateless_seed

INPUT_DIM = 784


class Dense(tf.Module):
    """An affine layer ``activation(x @ w + b)``: w ~ N(0, init_stddev²), b = 0."""

    def __init__(self, n_in: int, n_out: int, activation: str, init_stddev: float, seed,
                 name: str | None = None):
        super().__init__(name=name)
        self.activation = activation
        self.w = tf.Variable(
            tf.random.stateless_normal([n_in, n_out], seed=seed, stddev=init_stddev),
            name="w",
        )
        self.b = tf.Variable(tf.zeros([n_out]), name="b")

    def __call__(self, x):
        y = tf.matmul(x, self.w) + self.b
        return tf.nn.relu(y) if self.activation == "relu" else y


class MLP(tf.Module):
    """Fully connected layers: ReLU on the hidden ones, none on the output layer."""

    def __init__(self, sizes: Sequence[int], init_stddev: float, seed, name: str | None = None):
        super().__init__(name=name)
        self.layers = [
            Dense(n_in, n_out, "relu" if i < len(sizes) - 2 else "linear", init_stddev,
                  stateless_seed(seed, i), name=f"dense_{i}")
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        ]
        self.sizes = list(sizes)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def check_beta(beta) -> float:
    """``beta``, the KL weight of a training objective, as a float; it must be finite and
    non-negative (0 trains an autoencoder with a noisy code, 1 on the ELBO)."""
    if (isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating))
            or not np.isfinite(beta) or beta < 0):
        raise ValueError(f"beta, the weight of the KL term, must be a finite number >= 0 "
                         f"(1 trains on the ELBO), got {beta!r}")
    return float(beta)


def as_units(hidden_units) -> tuple[int, ...]:
    """``hidden_units``, one width or a sequence of widths, as a tuple of positive ints."""
    units = (hidden_units,) if isinstance(hidden_units, (int, np.integer)) else hidden_units
    units = tuple(int(u) for u in units)
    if any(u < 1 for u in units):
        raise ValueError(f"hidden_units must be positive integers, got {hidden_units!r}")
    return units


class VAE(tf.Module):
    """A VAE with pluggable likelihood, prior and variational family.

    Args:
        latent_dim: P, the size of z (homework: 2).
        hidden_units: hidden layer width, or a sequence of widths, used in both
            networks (homework: 512; ``()`` gives linear networks).
        likelihood: ``"gaussian"`` (homework: learned Σ, on dequantized pixels),
            ``"bernoulli"`` (on binarized pixels) or ``"continuous_bernoulli"``.
        prior: name of the prior p(z): ``"normal"`` (N(0, I)) or ``"laplace"``.
        posterior: name of the variational family q(z|x): ``"normal"`` or ``"laplace"``.
        init_stddev: standard deviation of the normal the weights start from (0.01).
        input_dim: D, pixels per image (784).
        covariance: Gaussian likelihood only: ``"scalar"`` σ² or ``"diagonal"`` Σ.
        init_variance: Gaussian likelihood only: the starting σ².
        output_activation: Gaussian likelihood only: ``"sigmoid"`` or ``"linear"`` mean.
        prior_scale: the Laplace prior's scale τ (the normal prior takes none).
        seed: the seed of the weight initialisation.
        beta: β ≥ 0, the weight of the KL term in the training objective
            (``training_terms``); 1, the default, trains on the ELBO itself. What the
            model reports as its ELBO (``elbo_terms``, ``compute_elbo``, and so every
            test ELBO and metric) is the true ELBO whatever β is.
    """

    #: continuous codes z in R^P (``vae_helpers.discrete`` has the categorical ones)
    latent_type = "continuous"

    def __init__(
        self,
        latent_dim: int = 2,
        hidden_units: int | Sequence[int] = 512,
        likelihood: str = "gaussian",
        prior: str = "normal",
        posterior: str = "normal",
        init_stddev: float = 0.01,
        input_dim: int = INPUT_DIM,
        covariance: str = "scalar",
        init_variance: float = 0.1,
        output_activation: str = "sigmoid",
        prior_scale: float = 1.0,
        seed: int = 0,
        beta: float = 1.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if not init_stddev > 0:
            raise ValueError(f"init_stddev must be positive, got {init_stddev!r}")
        units = as_units(hidden_units)
        self.latent_dim = int(latent_dim)
        self.input_dim = int(input_dim)
        self.hidden_units = units
        self.init_stddev = float(init_stddev)
        self.seed = int(seed)
        self.beta = check_beta(beta)
        lik_options = {}
        if likelihood == "gaussian":
            lik_options = dict(covariance=covariance, init_variance=init_variance,
                               output_activation=output_activation)
        elif output_activation != "sigmoid":
            raise ValueError(f"output_activation applies to the gaussian likelihood only, "
                             f"not {likelihood!r}")
        self.likelihood = dist.make_likelihood(likelihood, self.input_dim, **lik_options)
        self.prior = dist.make_prior(prior, self.latent_dim, prior_scale)
        self.posterior = dist.make_posterior(posterior, self.latent_dim)
        self.encoder = MLP([self.input_dim, *units, self.posterior.num_params], init_stddev,
                           stateless_seed(seed, SALT_INIT, 0), name="encoder")
        self.decoder = MLP([self.latent_dim, *units, self.input_dim], init_stddev,
                           stateless_seed(seed, SALT_INIT, 1), name="decoder")
        self._config = dict(
            latent_dim=self.latent_dim, hidden_units=list(units), likelihood=likelihood,
            prior=prior, posterior=posterior, init_stddev=self.init_stddev,
            input_dim=self.input_dim, covariance=covariance, init_variance=init_variance,
            output_activation=output_activation, prior_scale=float(prior_scale), seed=self.seed,
            beta=self.beta,
        )

    # ------------------------------------------------------------------ the homework API
    def infer(self, x) -> tfd.Distribution:
        """q(z | x): the variational posterior for a batch of flattened images ``[B, D]``."""
        return self.posterior(self.encoder(tf.convert_to_tensor(x, tf.float32)))

    def generate(self, z) -> tfd.Distribution:
        """p(x | z): the likelihood for latent codes ``[..., P]``, event shape ``[D]``."""
        return self.likelihood(self.decoder(tf.convert_to_tensor(z, tf.float32)))

    def prior_distribution(self) -> tfd.Distribution:
        """p(z)."""
        return self.prior()

    def elbo_terms(self, x, n_samples: int = 1, seed=None):
        """The per-example ELBO and its two terms.

        Args:
            x: flattened images ``[B, D]`` in the data variant of the likelihood.
            n_samples: S, the number of z samples for the reconstruction term.
            seed: an int or a stateless seed; ``None`` draws from TF's global state.

        Returns:
            ``(elbo, reconstruction, kl)``, each ``[B]``, with
            ``elbo = reconstruction - kl``; ``reconstruction`` is the Monte Carlo
            estimate of :math:`\\mathbb E_q[\\log p(x \\mid z)]`.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        q = self.infer(x)
        z = q.sample(n_samples, seed=None if seed is None else stateless_seed(seed))
        reconstruction = tf.reduce_mean(self.generate(z).log_prob(x), axis=0)
        kl = dist.kl_divergence(q, self.prior(), z)
        if kl.shape.rank == 2:  # Monte Carlo KL, one value per sample
            kl = tf.reduce_mean(kl, axis=0)
        return reconstruction - kl, reconstruction, kl

    def training_terms(self, x, n_samples: int = 1, seed=None, epoch=None):
        """The terms ``(objective, reconstruction, kl)`` that ``training.fit`` ascends.

        ``reconstruction`` and ``kl`` are those of ``elbo_terms`` (same samples), and
        ``objective = reconstruction - beta * kl``, each ``[B]``: with β = 1 (the
        default) the objective is the ELBO itself, bit for bit. ``epoch`` (the
        training progress in epochs, a float tensor) is for models whose objective
        changes during training, such as the relaxed discrete VAE of
        ``vae_helpers.discrete``; it is not used here.
        """
        del epoch
        _, reconstruction, kl = self.elbo_terms(x, n_samples=n_samples, seed=seed)
        return reconstruction - self.beta * kl, reconstruction, kl

    def compute_elbo(self, x, n_samples: int = 1, seed=None) -> tf.Tensor:
        """The Monte Carlo ELBO of each image in ``x`` (shape ``[B]``, nats)."""
        return self.elbo_terms(x, n_samples=n_samples, seed=seed)[0]

    def sample(self, n: int, seed=None) -> tf.Tensor:
        """``n`` images: z from the prior, then the mean of p(x | z). Shape ``[n, D]``."""
        z = self.prior().sample(n, seed=None if seed is None else stateless_seed(seed))
        return self.generate(z).mean()

    def reconstruct(self, x) -> tf.Tensor:
        """The mean of p(x | z) at the posterior mean of q(z | x). Shape ``[B, D]``."""
        return self.generate(self.infer(x).mean()).mean()

    def decode(self, z) -> tf.Tensor:
        """The mean image of p(x | z) for each code in ``z`` (used by the manifold plots)."""
        return self.generate(z).mean()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def config(self) -> dict:
        """The constructor arguments; ``VAE(**model.config)`` rebuilds the architecture."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> VAE:
        return cls(**config)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars: both networks and the likelihood's Σ."""
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))

    def spec(self) -> dict:
        """A JSON-friendly summary of the architecture (for reports and grading)."""
        return {
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            "hidden_units": list(self.hidden_units),
            "hidden_activation": "relu",
            "output_activation": self.likelihood.spec().get("output_activation", "sigmoid"),
            **self.likelihood.spec(),
            **self.prior.spec(),
            **self.posterior.spec(),
            "init_stddev": self.init_stddev,
            "num_parameters": self.num_parameters,
        }

    def summary(self) -> str:
        """A printable table of the layers and their parameter counts."""
        rows = []
        for net in (self.encoder, self.decoder):
            for layer in net.layers:
                n_in, n_out = layer.w.shape
                count = n_in * n_out + n_out
                rows.append(f"{net.name}/{layer.name:<9} {n_in:>4} -> {n_out:<4} "
                            f"{layer.activation:<7} {count:>9,d}")
        lik = self.likelihood
        extra = int(sum(np.prod(v.shape) for v in lik.trainable_variables))
        if extra:
            rows.append(f"likelihood variance ({lik.spec().get('covariance')}) {extra:>17,d}")
        rows.append(f"{'total trainable parameters':<37}{self.num_parameters:>9,d}")
        return "\n".join(rows)


# ---------------------------------------------------------------------- the student's weights
def homework_weight_shapes(latent_dim: int = 2, hidden_units: int = 512,
                           input_dim: int = INPUT_DIM) -> dict[str, tuple[int, ...]]:
    """The named float32 arrays of the homework VAE, as the student interface saves them.

    ``encoder/output`` maps to ``2 P`` numbers, the means of q(z|x) then the free
    parameters rho of its variances (softplus(rho) + 1e-6, the ``"normal"``
    posterior's); ``decoder/output`` gives the pre-sigmoid means of p(x|z);
    ``likelihood/rho`` is the free parameter of the scalar sigma^2
    (``distributions.MIN_VARIANCE`` + softplus(rho), the Gaussian likelihood's).
    """
    p, h, d = int(latent_dim), int(hidden_units), int(input_dim)
    return {
        "encoder/hidden/kernel": (d, h), "encoder/hidden/bias": (h,),
        "encoder/output/kernel": (h, 2 * p), "encoder/output/bias": (2 * p,),
        "decoder/hidden/kernel": (p, h), "decoder/hidden/bias": (h,),
        "decoder/output/kernel": (h, d), "decoder/output/bias": (d,),
        "likelihood/rho": (),
    }


def sizes_of_weights(arrays) -> tuple[int, int, int]:
    """``(latent_dim, hidden_units, input_dim)`` of named homework arrays, after checking
    that every name of ``homework_weight_shapes`` is there with its shape.

    Raises:
        ValueError: a missing or unknown name, or a shape that does not fit the others.
    """
    names = set(homework_weight_shapes())
    missing, unknown = sorted(names - set(arrays)), sorted(set(arrays) - names)
    if missing or unknown:
        raise ValueError("the weights must be exactly the arrays of homework_weight_shapes: "
                         + "; ".join(s for s in (missing and f"missing {', '.join(missing)}",
                                                 unknown and f"unknown {', '.join(unknown)}") if s))
    enc = tuple(np.shape(arrays["encoder/hidden/kernel"]))
    dec = tuple(np.shape(arrays["decoder/hidden/kernel"]))
    if len(enc) != 2 or len(dec) != 2 or enc[1] != dec[1] or min(enc + dec) < 1:
        raise ValueError(f"encoder/hidden/kernel must be [D, H] and decoder/hidden/kernel "
                         f"[P, H] with the same H; got {list(enc)} and {list(dec)}")
    (input_dim, hidden), latent = enc, dec[0]
    expected = homework_weight_shapes(latent, hidden, input_dim)
    for name, shape in expected.items():
        if tuple(np.shape(arrays[name])) != shape:
            raise ValueError(f"{name} has shape {list(np.shape(arrays[name]))}; with D = "
                             f"{input_dim}, H = {hidden} and P = {latent} it must be "
                             f"{list(shape)}")
    return int(latent), int(hidden), int(input_dim)


def homework_variables(model: VAE) -> dict[str, tf.Variable]:
    """The variables of a reference ``VAE`` of the homework's form (one hidden layer,
    Gaussian likelihood with a scalar sigma^2) by the names of ``homework_weight_shapes``."""
    variables = {}
    for net in (model.encoder, model.decoder):
        if len(net.layers) != 2:
            raise ValueError(f"the homework VAE has one hidden layer per network; the "
                             f"{net.name} has {len(net.layers) - 1}")
        for part, layer in zip(("hidden", "output"), net.layers, strict=True):
            variables[f"{net.name}/{part}/kernel"] = layer.w
            variables[f"{net.name}/{part}/bias"] = layer.b
    variables["likelihood/rho"] = model.likelihood.raw_variance
    return variables


def from_homework_weights(arrays) -> VAE:
    """The reference ``VAE`` (Gaussian likelihood, scalar sigma^2, normal prior and
    posterior) holding the named arrays of ``homework_weight_shapes``.

    With the same arrays and the same noise, its ``infer``, ``generate`` and ELBO
    are those of the student interface's model, whose parametrization of the
    variances is this class's.
    """
    latent, hidden, input_dim = sizes_of_weights(arrays)
    model = VAE(latent_dim=latent, hidden_units=hidden, input_dim=input_dim)
    for name, variable in homework_variables(model).items():
        variable.assign(np.asarray(arrays[name], np.float32))
    return model
