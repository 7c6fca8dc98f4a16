"""The math under the model, checked against closed forms, TFP and Monte Carlo."""

import math

import numpy as np
import pytest
from scipy import stats

from vae_helpers import distributions as dist
from vae_helpers.backend import tf, tfd

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)


def kl_diag_gauss_closed_form(mu1, var1, mu2, var2):
    """KL(N(mu1, diag var1) || N(mu2, diag var2)), written out by hand."""
    return 0.5 * np.sum(var1 / var2 + (mu2 - mu1) ** 2 / var2 - 1.0 + np.log(var2 / var1), -1)


def test_kl_two_diagonal_gaussians_closed_form_tfp_and_monte_carlo():
    mu1, mu2 = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    var1, var2 = RNG.uniform(0.3, 2.0, (3, 4)), RNG.uniform(0.3, 2.0, (3, 4))
    q = tfd.MultivariateNormalDiag(mu1, np.sqrt(var1))
    p = tfd.MultivariateNormalDiag(mu2, np.sqrt(var2))
    closed = kl_diag_gauss_closed_form(mu1, var1, mu2, var2)
    np.testing.assert_allclose(tfd.kl_divergence(q, p).numpy(), closed, rtol=1e-5)
    np.testing.assert_allclose(dist.kl_divergence(q, p).numpy(), closed, rtol=1e-5)
    z = q.sample(200_000, seed=(1, 2))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).numpy()
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(log_ratio))
    assert np.all(np.abs(mc - closed) < 5 * stderr + 1e-3)


def test_kl_against_standard_normal_special_case():
    mu = RNG.normal(size=(5, 2)).astype("float32")
    var = RNG.uniform(0.05, 3.0, (5, 2)).astype("float32")
    q = tfd.MultivariateNormalDiag(mu, np.sqrt(var))
    prior = dist.make_prior("normal", 2)()
    special = 0.5 * np.sum(var + mu**2 - 1.0 - np.log(var), -1)
    np.testing.assert_allclose(dist.kl_divergence(q, prior).numpy(), special, rtol=1e-5)


def test_kl_falls_back_to_monte_carlo_where_tfp_has_no_closed_form():
    q = tfd.Independent(tfd.Laplace(loc=[[0.3, -0.2]], scale=[[0.5, 1.5]]), 1)
    p = tfd.MultivariateNormalDiag(tf.zeros(2), tf.ones(2))
    assert not dist.has_analytic_kl(q, p)
    with pytest.raises(ValueError, match="Monte Carlo"):
        dist.kl_divergence(q, p)
    z = q.sample(100_000, seed=(3, 4))
    per_sample = dist.kl_divergence(q, p, z).numpy()
    assert per_sample.shape == (100_000, 1)
    # Closed form of KL(Laplace(m, b) || N(0, 1)) per dimension:
    # -log(2b) - 1 + 0.5 log(2 pi) + 0.5 (m^2 + 2 b^2).
    m, b = np.array([0.3, -0.2]), np.array([0.5, 1.5])
    exact = np.sum(-np.log(2 * b) - 1 + 0.5 * np.log(2 * np.pi) + 0.5 * (m**2 + 2 * b**2))
    stderr = per_sample.std() / math.sqrt(per_sample.size)
    assert abs(per_sample.mean() - exact) < 5 * stderr


def test_reparameterization_gradient_matches_autodiff_of_closed_form_expectation():
    """d/dmu and d/dsigma of E_q[exp(a.z)] for q = N(mu, diag sigma^2), z sampled by TFP."""
    a = tf.constant([0.7, -0.4])
    mu = tf.Variable([0.2, -0.1])
    sigma = tf.Variable([0.5, 0.8])
    with tf.GradientTape(persistent=True) as tape:
        q = tfd.MultivariateNormalDiag(mu, sigma)
        z = q.sample(400_000, seed=(5, 6))
        mc = tf.reduce_mean(tf.exp(tf.reduce_sum(a * z, -1)))
        closed = tf.exp(tf.reduce_sum(a * mu) + 0.5 * tf.reduce_sum(a**2 * sigma**2))
    for var in (mu, sigma):
        np.testing.assert_allclose(tape.gradient(mc, var).numpy(),
                                   tape.gradient(closed, var).numpy(), rtol=0.02, atol=2e-3)


def test_package_posterior_is_reparameterized_through_the_encoder_output():
    post = dist.make_posterior("normal", 2)
    params = tf.Variable([[0.1, -0.3, 0.4, -1.0]])  # mu (2), raw variance (2)
    with tf.GradientTape() as tape:
        q = post(params)
        z = q.sample(200_000, seed=(7, 8))
        mc = tf.reduce_mean(tf.reduce_sum(z**2, -1))
    # E[z^2] = mu^2 + var, var = softplus(raw) + 1e-6: d/dmu = 2 mu, d/draw = sigmoid(raw).
    expected = np.array([[0.2, -0.6, 1 / (1 + np.exp(-0.4)), 1 / (1 + np.exp(1.0))]])
    np.testing.assert_allclose(tape.gradient(mc, params).numpy(), expected, atol=0.01)
    assert q.reparameterization_type == tfd.FULLY_REPARAMETERIZED


@pytest.mark.parametrize("covariance", ["scalar", "diagonal"])
def test_gradient_wrt_sigma_squared_of_gaussian_log_likelihood(covariance):
    """d/d sigma^2 log N(x; m, sigma^2 I) = -D/(2 sigma^2) + ||x - m||^2 / (2 sigma^4)."""
    d = 784
    lik = dist.make_likelihood("gaussian", d, covariance=covariance, init_variance=0.05)
    logits = tf.constant(RNG.normal(size=(1, d)), tf.float32)
    x = tf.constant(RNG.uniform(size=(1, d)), tf.float32)
    with tf.GradientTape() as tape:
        log_p = tf.reduce_sum(lik(logits).log_prob(x))
    grad_raw = tape.gradient(log_p, lik.raw_variance).numpy()
    var = lik.variance.numpy()
    sq = ((x - tf.sigmoid(logits)).numpy() ** 2)[0]
    if covariance == "scalar":
        d_var = -d / (2 * var) + sq.sum() / (2 * var**2)
    else:
        d_var = -1 / (2 * var) + sq / (2 * var**2)
    # variance = floor + softplus(raw), so d var / d raw = sigmoid(raw).
    chain = 1 / (1 + np.exp(-lik.raw_variance.numpy()))
    np.testing.assert_allclose(grad_raw, d_var * chain, rtol=1e-4)


def test_gaussian_likelihood_matches_the_density_written_out():
    lik = dist.make_likelihood("gaussian", 6, init_variance=0.3)
    logits = RNG.normal(size=(2, 6)).astype("float32")
    x = RNG.uniform(size=(2, 6)).astype("float32")
    m, var = 1 / (1 + np.exp(-logits)), lik.variance.numpy()
    by_hand = -0.5 * np.sum(np.log(2 * np.pi * var) + (x - m) ** 2 / var, -1)
    np.testing.assert_allclose(lik(logits).log_prob(x).numpy(), by_hand, rtol=1e-5)


def test_bernoulli_likelihood_matches_the_mass_written_out():
    lik = dist.make_likelihood("bernoulli", 5)
    logits = RNG.normal(size=(3, 5)).astype("float32")
    x = (RNG.uniform(size=(3, 5)) < 0.5).astype("float32")
    p = 1 / (1 + np.exp(-logits))
    by_hand = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), -1)
    np.testing.assert_allclose(lik(logits).log_prob(x).numpy(), by_hand, rtol=1e-5)


def test_continuous_bernoulli_is_normalised_on_the_unit_interval():
    lik = dist.make_likelihood("continuous_bernoulli", 1)
    grid = np.linspace(0.0, 1.0, 20_001, dtype="float32")[:, None]
    for logit in (-3.0, -0.2, 0.0, 1.5):
        density = np.exp(lik(tf.fill([grid.shape[0], 1], logit)).log_prob(grid).numpy())
        assert abs(np.trapezoid(density, grid[:, 0]) - 1.0) < 1e-3


@pytest.mark.parametrize("covariance", ["scalar", "diagonal"])
def test_gaussian_density_is_bounded_whatever_the_parameters(covariance):
    d = 784
    lik = dist.make_likelihood("gaussian", d, covariance=covariance)
    lik.raw_variance.assign(tf.fill(lik.raw_variance.shape, -1e4))  # softplus -> 0
    logits = tf.fill([1, d], -30.0)                                  # mean ~ 1e-13
    x = tf.zeros([1, d])                                             # the mean exactly
    log_p = lik(logits).log_prob(x).numpy()
    assert np.isfinite(log_p).all()
    assert np.all(log_p <= lik.max_log_density(d) + 1e-3)
    np.testing.assert_allclose(lik.variance.numpy(), dist.MIN_VARIANCE, rtol=1e-6)


@pytest.mark.parametrize("kind,factory", [
    ("likelihood", lambda: dist.make_likelihood("poisson", 4)),
    ("prior", lambda: dist.make_prior("cauchy", 2)),
    ("posterior", lambda: dist.make_posterior("flow", 2)),
    ("options", lambda: dist.make_likelihood("bernoulli", 4, covariance="diagonal")),
    ("covariance", lambda: dist.make_likelihood("gaussian", 4, covariance="full")),
    ("init", lambda: dist.make_likelihood("gaussian", 4, init_variance=0.0)),
])
def test_bad_names_and_options_are_clear_errors(kind, factory):
    with pytest.raises(ValueError) as err:
        factory()
    message = str(err.value)
    assert len(message) > 20 and "\n" not in message


def test_maximising_the_likelihood_on_always_black_pixels_stops_at_the_floor():
    """The failure the floor prevents: sigma^2 -> 0 where the mean fits exactly.

    The mean is held at sigmoid(-30) ~ 1e-13 on pixels that are exactly 0 (not
    even dequantized: the worst case) and only the per-pixel variances are
    trained. Without a floor the optimum is sigma^2 = 0 and log p = +infinity.
    """
    d = 784
    lik = dist.make_likelihood("gaussian", d, covariance="diagonal", init_variance=0.05)
    logits, x = tf.fill([64, d], -30.0), tf.zeros([64, d])
    opt = tf.keras.optimizers.Adam(0.5)
    for _ in range(300):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(lik(logits).log_prob(x))
        opt.apply_gradients([(tape.gradient(loss, lik.raw_variance), lik.raw_variance)])
    floor = 1.0 / (12 * 256**2)
    np.testing.assert_allclose(lik.variance.numpy(), floor, rtol=0.01)
    log_p = lik(logits).log_prob(x).numpy()
    assert np.all(np.isfinite(log_p))
    assert np.all(log_p <= -0.5 * d * math.log(2 * math.pi * floor) + 1e-2)


def test_seeds_are_bounded_so_they_never_wrap():
    from vae_helpers.seeding import MAX_SEED, stateless_seed

    assert not np.array_equal(stateless_seed(MAX_SEED).numpy(), stateless_seed(5).numpy())
    for bad in (MAX_SEED + 1, -1, 1.5, True):
        with pytest.raises(ValueError, match="2\\*\\*62"):
            stateless_seed(bad)


# --------------------------------------------------------------------------- fast sampling
def _ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                         - np.searchsorted(b, grid, side="right") / b.size))


def _ks_critical(n, m, alpha=1e-3):
    """The two-sample KS statistic exceeds this with probability about alpha (large n, m)."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def test_standard_normal_noise_is_standard_normal_and_the_same_eager_and_compiled():
    n = 200_000
    seed = tf.constant([11, 12])
    eps = dist.standard_normal([n], seed).numpy()
    # against the exact N(0, 1) CDF (one-sample KS) and its first four moments
    cdf = tfd.Normal(np.float64(0), np.float64(1)).cdf(np.sort(eps).astype("float64")).numpy()
    ks = np.max(np.maximum(np.arange(1, n + 1) / n - cdf, cdf - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n)  # 5% of the time at most 1.36 / sqrt(n)
    se = 1 / math.sqrt(n)
    assert abs(eps.mean()) < 5 * se and abs(eps.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(np.mean(eps**3)) < 5 * math.sqrt(15) * se
    assert abs(np.mean(eps**4) - 3) < 5 * math.sqrt(96) * se
    assert np.all(np.isfinite(eps)) and np.abs(eps).max() < 5.3
    # stateless: the same seed, eagerly or under XLA, gives the same draws
    compiled = tf.function(lambda s: dist.standard_normal([n], s), jit_compile=True)
    np.testing.assert_allclose(compiled(seed).numpy(), eps, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(dist.standard_normal([n], seed).numpy(), eps)
    assert not np.allclose(dist.standard_normal([n], tf.constant([11, 13])).numpy(), eps)


def test_samples_from_noise_match_tfps_sampler():
    """The package posterior, sampled from our noise and by TFP: same distribution."""
    post = dist.make_posterior("normal", 2)
    params = tf.constant([[0.3, -1.2, -2.0, 0.5], [4.0, 0.1, -6.0, -0.3]])
    q = post(params)                                          # batch [2], event [2]
    n = 100_000
    ours = dist.sample_from_noise(q, dist.standard_normal([n, 2, 2], tf.constant([1, 2])))
    tfps = q.sample(n, seed=(3, 4))
    assert ours.shape == tfps.shape == (n, 2, 2)
    ours, tfps = ours.numpy(), tfps.numpy()
    mean, std = q.mean().numpy(), q.stddev().numpy()
    for b in range(2):
        for d in range(2):
            assert _ks_statistic(ours[:, b, d], tfps[:, b, d]) < _ks_critical(n, n)
            assert abs(ours[:, b, d].mean() - mean[b, d]) < 5 * std[b, d] / math.sqrt(n)
            assert abs(ours[:, b, d].std() / std[b, d] - 1) < 5 / math.sqrt(2 * n)
    # the two coordinates stay independent
    assert abs(np.corrcoef(ours[:, 0, 0], ours[:, 0, 1])[0, 1]) < 5 / math.sqrt(n)


def test_samples_from_noise_are_reparameterized():
    post = dist.make_posterior("normal", 2)
    params = tf.Variable([[0.1, -0.3, 0.4, -1.0]])
    eps = dist.standard_normal([100_000, 1, 2], tf.constant([5, 6]))
    with tf.GradientTape() as tape:
        z = dist.sample_from_noise(post(params), eps)
        mc = tf.reduce_mean(tf.reduce_sum(z**2, -1))
    # as in the TFP-sampled test above: d/dmu = 2 mu, d/draw = sigmoid(raw)
    expected = np.array([[0.2, -0.6, 1 / (1 + np.exp(-0.4)), 1 / (1 + np.exp(1.0))]])
    np.testing.assert_allclose(tape.gradient(mc, params).numpy(), expected, atol=0.01)


def test_sample_from_noise_refuses_families_not_built_on_normal_noise():
    q = tfd.Independent(tfd.Bernoulli(probs=[0.5, 0.5]), 1)
    assert not dist.has_standard_normal_noise(q)
    with pytest.raises(TypeError, match="q.sample"):
        dist.sample_from_noise(q, tf.zeros([3, 2]))


def test_philox_gumbel_noise_is_standard_gumbel():
    g = dist.standard_gumbel([50000], seed=(1, 2)).numpy()
    cdf = tfd.Gumbel(0.0, 1.0).cdf
    assert stats.kstest(g, lambda v: cdf(v.astype(np.float32)).numpy()).pvalue > 1e-3
    np.testing.assert_allclose(g.mean(), np.euler_gamma, atol=5 * np.pi / math.sqrt(6 * 50000))
    u = dist.philox_uniform([100000], seed=(3, 4)).numpy()
    assert 0.0 < u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
