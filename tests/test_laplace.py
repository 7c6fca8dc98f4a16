"""The Laplace prior and family (Problem 4a): sampling, its pathwise gradient, the KL terms,
and a model that trains with them."""

import math

import numpy as np
import pytest
from scipy import stats

from vae_helpers import distributions as dist
from vae_helpers import evaluate
from vae_helpers.backend import tf, tfd
from vae_helpers.model import VAE
from vae_helpers.runs import build_model
from vae_helpers.training import TrainingSettings, fit

pytestmark = pytest.mark.unit

MU = np.array([0.7, -1.3], np.float32)
B = np.array([0.4, 2.5], np.float32)


def laplace_kl_closed_form(m1, b1, m2, b2):
    """KL(Lap(m1, b1) || Lap(m2, b2)) per coordinate, derived by hand:
    log(b2/b1) + |m1 - m2| / b2 + (b1 / b2) exp(-|m1 - m2| / b1) - 1."""
    d = np.abs(m1 - m2)
    return np.log(b2 / b1) + d / b2 + (b1 / b2) * np.exp(-d / b1) - 1.0


def gauss_laplace_kl_closed_form(m, s, tau):
    """KL(N(m, s^2) || Lap(0, tau)) per coordinate: the Gaussian's negative entropy plus
    log(2 tau) + E|z| / tau, where E|z| is the folded normal's mean."""
    folded_mean = s * math.sqrt(2 / math.pi) * np.exp(-m**2 / (2 * s**2)) + m * (
        1 - 2 * stats.norm.cdf(-m / s))
    return -0.5 * np.log(2 * math.pi * math.e * s**2) + np.log(2 * tau) + folded_mean / tau


def test_the_inverse_cdf_transform_gives_laplace_samples():
    u = tf.random.stateless_uniform([20000], seed=(1, 2), minval=1e-7, maxval=1 - 1e-7)
    for m, b in zip(MU, B, strict=True):
        z = dist.laplace_from_uniform(m, b, u).numpy()
        cdf = tfd.Laplace(float(m), float(b)).cdf
        result = stats.kstest(z, lambda v, cdf=cdf: cdf(v.astype(np.float32)).numpy())
        assert result.pvalue > 1e-3, (m, b, result)
        # and it is TFP's own quantile function, evaluated at u
        np.testing.assert_allclose(z, tfd.Laplace(float(m), float(b)).quantile(u).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_the_ks_test_has_power_against_a_wrong_scale():
    u = tf.random.stateless_uniform([20000], seed=(1, 2), minval=1e-7, maxval=1 - 1e-7)
    z = dist.laplace_from_uniform(0.0, 1.2, u).numpy()
    cdf = tfd.Laplace(0.0, 1.0).cdf
    assert stats.kstest(z, lambda v: cdf(v.astype(np.float32)).numpy()).pvalue < 1e-6


def test_the_posterior_samples_with_tfp_and_they_pass_a_ks_test():
    family = dist.make_posterior("laplace", 2)
    raw = np.log(np.expm1(B - family.scale_floor))            # softplus^-1(b - floor)
    q = family(tf.constant(np.concatenate([MU, raw])[None]))
    assert isinstance(q.distribution, tfd.Laplace)
    np.testing.assert_allclose(q.distribution.scale.numpy()[0], B, rtol=1e-5)
    z = q.sample(20000, seed=(5, 6)).numpy()[:, 0, :]
    for j in range(2):
        cdf = tfd.Laplace(float(MU[j]), float(B[j])).cdf
        assert stats.kstest(z[:, j], lambda v, cdf=cdf: cdf(v.astype(np.float32)).numpy()
                            ).pvalue > 1e-3


def test_pathwise_gradient_is_z_minus_mu_over_b_and_matches_autodiff():
    mu, b = tf.Variable(MU), tf.Variable(B)
    u = tf.random.stateless_uniform([500, 2], seed=(3, 4), minval=1e-6, maxval=1 - 1e-6)
    with tf.GradientTape(persistent=True) as tape:
        z = dist.laplace_from_uniform(mu, b, u)
        total = tf.reduce_sum(z)
    dz_db = tape.jacobian(z, b)                                # [500, 2, 2]
    dz_dmu = tape.gradient(total, mu)
    per_sample = np.einsum("sjj->sj", dz_db.numpy())
    np.testing.assert_allclose(per_sample, (z.numpy() - MU) / B, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dz_dmu.numpy(), [500.0, 500.0])
    # TFP's sampler is reparameterized the same way: its gradient is (z - mu) / b too
    with tf.GradientTape() as tape:
        z_tfp = tfd.Laplace(mu, b).sample(500, seed=(7, 8))
        total = tf.reduce_sum(z_tfp)
    np.testing.assert_allclose(tape.gradient(total, b).numpy(),
                               np.sum((z_tfp.numpy() - MU) / B, axis=0), rtol=1e-4)


def test_laplace_kl_closed_form_tfp_and_monte_carlo():
    m1, b1 = np.array([0.3, -1.0, 2.0], np.float32), np.array([0.5, 1.5, 0.2], np.float32)
    m2, b2 = np.array([0.0, 0.5, 1.0], np.float32), np.array([1.0, 0.7, 3.0], np.float32)
    q, p = tfd.Laplace(m1, b1), tfd.Laplace(m2, b2)
    closed = laplace_kl_closed_form(m1, b1, m2, b2)
    np.testing.assert_allclose(tfd.kl_divergence(q, p).numpy(), closed, rtol=1e-5)
    z = q.sample(400_000, seed=(9, 10))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).numpy()
    stderr = log_ratio.std(0) / math.sqrt(len(log_ratio))
    assert np.all(np.abs(log_ratio.mean(0) - closed) < 5 * stderr + 1e-4)
    # the model's prior/posterior pair uses the closed form (one value per image)
    prior = dist.make_prior("laplace", 3, scale=0.8)()
    posterior = tfd.Independent(q, 1)
    assert dist.has_analytic_kl(posterior, prior)
    np.testing.assert_allclose(dist.kl_divergence(posterior, prior).numpy(),
                               laplace_kl_closed_form(m1, b1, 0.0, 0.8).sum(), rtol=1e-5)


def test_gaussian_posterior_against_laplace_prior_uses_monte_carlo():
    m, s, tau = np.array([0.4, -2.0], np.float32), np.array([0.3, 1.1], np.float32), 1.5
    q = tfd.MultivariateNormalDiag(m, s)
    prior = dist.make_prior("laplace", 2, scale=tau)()
    assert not dist.has_analytic_kl(q, prior)
    z = q.sample(200_000, seed=(11, 12))
    per_sample = dist.kl_divergence(q, prior, z).numpy()
    exact = gauss_laplace_kl_closed_form(m, s, tau).sum()
    stderr = per_sample.std() / math.sqrt(per_sample.size)
    assert abs(per_sample.mean() - exact) < 5 * stderr


@pytest.mark.parametrize("posterior", ["laplace", "normal"])
def test_a_laplace_prior_model_gives_finite_elbo_terms_of_the_right_shapes(posterior):
    model = VAE(prior="laplace", posterior=posterior, prior_scale=0.5, hidden_units=[32])
    x = tf.random.stateless_uniform([6, 784], seed=(1, 1))
    elbo, rec, kl = model.elbo_terms(x, n_samples=3, seed=0)
    assert elbo.shape == rec.shape == kl.shape == (6,)
    np.testing.assert_allclose(elbo.numpy(), (rec - kl).numpy(), rtol=1e-6)
    assert np.all(np.isfinite(elbo.numpy()))
    if posterior == "laplace":  # closed form: positive; Monte Carlo estimates may dip below 0
        assert np.all(kl.numpy() > 0)
    spec = model.spec()
    assert spec["prior"] == "laplace" and spec["prior_scale"] == 0.5
    assert spec["posterior"] == posterior
    rebuilt = build_model(**model.config)
    assert rebuilt.config == model.config and rebuilt.prior.scale == 0.5
    z1, z2 = np.asarray(model.prior_distribution().sample(4, seed=(2, 2))).T
    assert z1.shape == z2.shape == (4,)


def test_laplace_model_iwae_bound_sits_above_its_elbo():
    model = VAE(prior="laplace", posterior="laplace", hidden_units=[32])
    x = tf.random.stateless_uniform([4, 784], seed=(2, 3))
    elbo = evaluate.evaluate_elbo(model, x, n_samples=2000, per_example=True)["elbo"]
    iwae = evaluate.iwae_log_likelihood(model, x, k=2000, per_example=True)
    assert np.all(iwae >= elbo - 0.05), (iwae, elbo)


@pytest.mark.parametrize("posterior", ["laplace", "normal"])
def test_short_training_with_a_laplace_prior_raises_the_elbo(posterior, blob_digits):
    digits, _ = blob_digits(templates=10, density=0.15, noise=60)
    model = VAE(prior="laplace", posterior=posterior, hidden_units=[64])
    held_out = evaluate.prepare_eval_data(digits[-256:], "dequantized")
    before = evaluate.evaluate_elbo(model, held_out, n_samples=10)["elbo"]
    fit(model, digits[:1024], TrainingSettings(epochs=20, batch_size=128, learning_rate=3e-3),
        progress=False)
    after = evaluate.evaluate_elbo(model, held_out, n_samples=10)["elbo"]
    assert after > before + 200, (before, after)


def test_bad_prior_scales_are_clear_errors():
    with pytest.raises(ValueError, match="positive"):
        VAE(prior="laplace", prior_scale=0.0)
    with pytest.raises(ValueError, match="laplace prior only"):
        VAE(prior="normal", prior_scale=2.0)
    with pytest.raises(ValueError, match="unknown posterior"):
        VAE(posterior="cauchy")
