"""The homework's specification of the model, and the model's public interface."""

import numpy as np
import pytest

from vae_helpers import distributions as dist
from vae_helpers.backend import tf, tfd
from vae_helpers.model import VAE

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def model():
    return VAE()


def test_architecture_is_the_homeworks(model):
    enc, dec = model.encoder.layers, model.decoder.layers
    assert [tuple(layer.w.shape) for layer in enc] == [(784, 512), (512, 4)]
    assert [tuple(layer.w.shape) for layer in dec] == [(2, 512), (512, 784)]
    assert [layer.activation for layer in enc] == ["relu", "linear"]
    assert [layer.activation for layer in dec] == ["relu", "linear"]
    spec = model.spec()
    assert spec["latent_dim"] == 2 and spec["hidden_units"] == [512]
    assert spec["hidden_activation"] == "relu" and spec["output_activation"] == "sigmoid"
    # both networks (weights + biases) and the one learned variance sigma^2
    expected = (784 * 512 + 512) + (512 * 4 + 4) + (2 * 512 + 512) + (512 * 784 + 784) + 1
    assert model.num_parameters == expected
    assert "total trainable parameters" in model.summary()


def test_weights_start_normal_with_stddev_001_and_biases_zero(model):
    for layer in model.encoder.layers + model.decoder.layers:
        w = layer.w.numpy()
        assert np.all(layer.b.numpy() == 0)
        if w.size > 10_000:
            assert abs(w.std() - 0.01) < 0.0002
            assert abs(w.mean()) < 0.0002
            # normal, not uniform: the kurtosis of a normal is 3 (a uniform's is 1.8)
            kurtosis = np.mean((w - w.mean()) ** 4) / w.var() ** 2
            assert abs(kurtosis - 3) < 0.1


def test_init_stddev_is_a_parameter_and_the_seed_fixes_the_weights():
    wide = VAE(init_stddev=0.1)
    assert abs(wide.encoder.layers[0].w.numpy().std() - 0.1) < 0.002
    a, b, c = VAE(seed=3), VAE(seed=3), VAE(seed=4)
    for va, vb, vc in zip(a.trainable_variables, b.trainable_variables,
                          c.trainable_variables, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
        if va.shape.rank == 2:
            assert not np.array_equal(va.numpy(), vc.numpy())


def test_variances_are_positive_and_the_decoder_mean_inside_unit_interval(model):
    x = tf.constant(RNG.normal(scale=1000.0, size=(64, 784)), tf.float32)
    q = model.infer(x)
    assert np.all(q.variance().numpy() > 0)
    z = tf.constant(RNG.normal(scale=50.0, size=(64, 2)), tf.float32)
    mean = model.generate(z).mean().numpy()
    assert np.all((mean >= 0) & (mean <= 1))
    lik = model.likelihood
    assert isinstance(lik, dist.GaussianLikelihood)
    assert float(lik.variance) > dist.MIN_VARIANCE


def test_methods_return_tfp_distributions_and_tensors_of_the_right_shapes(model):
    x = tf.constant(RNG.uniform(size=(5, 784)), tf.float32)
    q = model.infer(x)
    assert isinstance(q, tfd.Distribution)
    assert q.batch_shape == [5] and q.event_shape == [2]
    p = model.generate(tf.zeros([5, 2]))
    assert isinstance(p, tfd.Distribution)
    assert p.batch_shape == [5] and p.event_shape == [784]
    assert model.compute_elbo(x, seed=0).shape == [5]
    assert model.compute_elbo(x, n_samples=7, seed=0).shape == [5]
    assert model.sample(9, seed=0).shape == [9, 784]
    assert model.reconstruct(x).shape == [5, 784]
    assert isinstance(model.prior_distribution(), tfd.Distribution)


def test_elbo_is_reconstruction_minus_kl_and_seeded(model):
    x = tf.constant(RNG.uniform(size=(6, 784)), tf.float32)
    elbo, rec, kl = model.elbo_terms(x, n_samples=3, seed=11)
    np.testing.assert_allclose(elbo.numpy(), (rec - kl).numpy(), rtol=1e-6)
    expected_kl = tfd.kl_divergence(model.infer(x), model.prior_distribution())
    np.testing.assert_allclose(kl.numpy(), expected_kl.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(model.compute_elbo(x, seed=11).numpy(),
                                  model.compute_elbo(x, seed=11).numpy())
    assert not np.array_equal(model.compute_elbo(x, seed=11).numpy(),
                              model.compute_elbo(x, seed=12).numpy())


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_other_likelihoods(likelihood):
    m = VAE(likelihood=likelihood)
    x = tf.constant((RNG.uniform(size=(3, 784)) < 0.3).astype("float32"))
    assert np.all(np.isfinite(m.compute_elbo(x, seed=0).numpy()))
    mean = m.sample(4, seed=0).numpy()
    assert np.all((mean >= 0) & (mean <= 1))
    assert m.spec()["likelihood"] == likelihood
    assert m.num_parameters == VAE().num_parameters - 1  # no learned variance


def test_diagonal_covariance_learns_one_variance_per_pixel():
    m = VAE(covariance="diagonal")
    assert m.likelihood.variance.shape == [784]
    assert m.num_parameters == VAE().num_parameters - 1 + 784


def test_config_rebuilds_the_same_model():
    m = VAE(latent_dim=3, hidden_units=[64, 32], likelihood="bernoulli", seed=5)
    again = VAE.from_config(m.config)
    assert again.spec() == m.spec()
    for a, b in zip(m.trainable_variables, again.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("kwargs", [
    dict(latent_dim=0), dict(hidden_units=[512, 0]), dict(init_stddev=0.0),
    dict(likelihood="poisson"), dict(prior="cauchy"), dict(posterior="flow"),
    dict(likelihood="bernoulli", output_activation="linear"),
])
def test_bad_arguments_are_clear_errors(kwargs):
    with pytest.raises(ValueError) as err:
        VAE(**kwargs)
    assert "\n" not in str(err.value) and len(str(err.value)) > 15
