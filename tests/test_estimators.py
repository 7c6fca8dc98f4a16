"""Gradient estimators of the categorical VAE against the exact gradient by enumeration.

The model is small enough (2 variables of 3 classes: 9 codes, 12 pixels, linear
networks) that the exact gradient is a sum over every code. The statistical tests
compare each parameter's Monte Carlo mean with it in standard errors, with a
Bonferroni threshold: under the hypothesis that an estimator is unbiased, the
largest of the P standardized differences exceeds ``z_threshold(P)`` with
probability at most ALPHA = 0.1 % (for normal means; with 3,000 draws of bounded
gradients the central limit theorem makes them close to normal).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from vae_helpers.backend import tf
from vae_helpers.discrete import (
    CategoricalVAE,
    compare_estimators,
    estimator_terms,
    gradient_draws,
    gradient_moments,
)
from vae_helpers.seeding import stateless_seed

pytestmark = pytest.mark.unit

ALPHA = 1e-3
N_DRAWS = 3000
RNG = np.random.default_rng(3)
X = (RNG.random((6, 12)) < 0.5).astype(np.float32)


def z_threshold(n_params: int) -> float:
    """Two-sided Bonferroni bound for ``n_params`` standardized means at level ALPHA."""
    return float(norm.isf(ALPHA / (2 * n_params)))


@pytest.fixture(scope="module")
def model():
    return CategoricalVAE(num_variables=2, num_classes=3, hidden_units=(), input_dim=12,
                          init_stddev=0.6, seed=4)


def ordered(model):
    """The encoder's variables, then the decoder's (``trainable_variables`` sorts them
    by attribute name, the decoder first)."""
    return [*model.encoder.trainable_variables, *model.decoder.trainable_variables]


@pytest.fixture(scope="module")
def exact(model):
    return gradient_draws(model, X, "exact", 1, variables=ordered(model))[0]


def encoder_size(model):
    return sum(int(np.prod(v.shape)) for v in model.encoder.trainable_variables)


def standardized(moments, exact):
    """(mean - exact) / standard error where the standard error is positive; the
    parameters whose draws never vary must equal the exact gradient outright."""
    se = moments["standard_error"]
    fixed = se == 0
    np.testing.assert_allclose(moments["mean"][fixed], exact[fixed], atol=1e-6)
    return (moments["mean"][~fixed] - exact[~fixed]) / se[~fixed], ~fixed


def test_the_exact_gradient_is_the_finite_difference_of_the_exact_elbo(model, exact):
    """The reference itself, against central differences of the enumerated ELBO."""
    variables = ordered(model)
    flat = np.concatenate([v.numpy().ravel() for v in variables])
    assert flat.size == exact.size

    def elbo_at(values):
        start = 0
        for v in variables:
            n = int(np.prod(v.shape))
            v.assign(values[start:start + n].reshape(v.shape))
            start += n
        return float(np.mean(model.elbo_terms(X)[0].numpy().astype(np.float64)))

    h = 1e-2
    check = RNG.choice(flat.size, size=40, replace=False)
    try:
        for i in check:
            up, down = flat.copy(), flat.copy()
            up[i] += h
            down[i] -= h
            assert (elbo_at(up) - elbo_at(down)) / (2 * h) == pytest.approx(exact[i], abs=2e-3)
    finally:
        elbo_at(flat)
    assert np.abs(exact).max() > 0.05  # the case is not degenerate


def test_exact_has_variance_zero(model, exact):
    moments = gradient_moments(model, X, "exact", 3, variables=ordered(model))
    assert moments["total_variance"] == 0.0
    np.testing.assert_array_equal(moments["mean"], exact)


def test_reinforce_is_unbiased_within_monte_carlo_error(model, exact):
    moments = gradient_moments(model, X, "reinforce", N_DRAWS, n_samples=2, seed=11,
                               variables=ordered(model))
    z, varying = standardized(moments, exact)
    assert varying[:encoder_size(model)].sum() > 20  # the encoder's gradient is tested
    assert np.abs(z).max() < z_threshold(z.size), np.abs(z).max()


def test_the_leave_one_out_baseline_reduces_the_variance(model):
    encoder = model.encoder.trainable_variables
    plain = gradient_moments(model, X, "reinforce", 1000, n_samples=2, baseline="none",
                             variables=encoder, seed=1)
    loo = gradient_moments(model, X, "reinforce", 1000, n_samples=2, baseline="loo",
                           variables=encoder, seed=1)
    # a sample variance of 1,000 draws is within some 10 % of the true one; the
    # baseline removes far more than that
    assert loo["mean_variance"] < 0.2 * plain["mean_variance"]
    # and both are unbiased: the means agree with each other within their errors
    se = np.sqrt(plain["standard_error"] ** 2 + loo["standard_error"] ** 2)
    varying = se > 0
    diff = (plain["mean"] - loo["mean"])[varying] / se[varying]
    assert np.abs(diff).max() < z_threshold(diff.size)


def test_straight_through_is_biased_for_the_encoder_only(model, exact):
    """Its forward pass uses exact one-hot samples, so the decoder's gradient is
    unbiased; the encoder's comes through the relaxation and is not."""
    moments = gradient_moments(model, X, "straight_through", N_DRAWS, n_samples=1,
                               temperature=1.0, seed=12, variables=ordered(model))
    k = encoder_size(model)
    se = moments["standard_error"]
    enc = (moments["mean"][:k] - exact[:k]) / np.where(se[:k] > 0, se[:k], np.inf)
    assert np.abs(enc).max() > z_threshold(k), "the encoder's bias is measurable"
    dec_z, _ = standardized({key: v[k:] if isinstance(v, np.ndarray) else v
                             for key, v in moments.items()}, exact[k:])
    assert np.abs(dec_z).max() < z_threshold(dec_z.size)


def test_the_relaxed_estimator_is_biased(model, exact):
    moments = gradient_moments(model, X, "relaxed", N_DRAWS, n_samples=1, temperature=1.0,
                               seed=13, variables=ordered(model))
    z, _ = standardized(moments, exact)
    assert np.abs(z).max() > z_threshold(z.size)
    # its bias shrinks as the temperature falls (and its variance grows)
    cold = gradient_moments(model, X, "relaxed", N_DRAWS, n_samples=1, temperature=0.1,
                            seed=13, variables=ordered(model))
    assert (np.linalg.norm(cold["mean"] - exact) < np.linalg.norm(moments["mean"] - exact))
    assert cold["total_variance"] > moments["total_variance"]


def test_the_moments_are_numpys_of_the_draws_done_by_hand(model):
    """gradient_moments against draws computed here, one tape per draw, and NumPy."""
    variables = model.encoder.trainable_variables
    n, seed = 30, 5
    by_hand = []
    for i in range(n):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(estimator_terms(model, X, "reinforce", 3,
                                                  stateless_seed(seed, i))[0])
        grads = tape.gradient(loss, variables)
        by_hand.append(np.concatenate([g.numpy().ravel() for g in grads]))
    by_hand = np.array(by_hand, dtype=np.float64)
    moments = gradient_moments(model, X, "reinforce", n, variables=variables, n_samples=3,
                               seed=seed)
    np.testing.assert_allclose(moments["mean"], by_hand.mean(axis=0), rtol=1e-5, atol=1e-7)
    variance = np.var(by_hand, axis=0, ddof=1)
    np.testing.assert_allclose(moments["variance"], variance, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(moments["standard_error"], np.sqrt(variance / n), rtol=1e-4,
                               atol=1e-10)
    assert moments["mean_variance"] == pytest.approx(variance.mean(), rel=1e-4)
    assert moments["total_variance"] == pytest.approx(variance.sum(), rel=1e-4)
    assert moments["n_draws"] == n and by_hand.std(axis=0).max() > 0


def test_compare_estimators_side_by_side(model):
    rows = compare_estimators(model, X, n_draws=200, seed=2)
    names = [(r["estimator"], r["baseline"]) for r in rows]
    assert names == [("exact", None), ("reinforce", "loo"), ("reinforce", "none"),
                     ("straight_through", None), ("relaxed", None)]
    by = dict(zip(names, rows, strict=True))
    assert by[("exact", None)]["total_variance"] == 0 and by[("exact", None)]["bias_norm"] == 0
    assert by[("reinforce", "loo")]["total_variance"] < by[("reinforce", "none")]["total_variance"]
    for r in rows:
        assert math.isfinite(r["bias_norm"]) and r["mean_variance"] >= 0


def test_the_reported_reconstruction_is_an_unbiased_estimate(model):
    """The value (not the gradient) of the sampled estimators' reconstruction term:
    one-hot samples, so its mean over seeds is the exact term."""
    exact = model.elbo_terms(X)[1].numpy().mean()
    for estimator in ("reinforce", "straight_through"):
        # 20 independent means of 200 samples each; |t| > 4 with 19 degrees of freedom
        # has probability below 0.1 % for an unbiased estimate
        values = np.array([estimator_terms(model, X, estimator, 200, seed=s)[1].numpy().mean()
                           for s in range(20)])
        se = values.std(ddof=1) / np.sqrt(values.size)
        assert abs(values.mean() - exact) < 4 * se, estimator


def test_training_with_each_estimator_improves_the_elbo():
    from vae_helpers.training import TrainingSettings, fit

    data = (np.random.default_rng(0).random((256, 12)) < 0.3).astype(np.float32)
    for estimator in ("reinforce", "straight_through"):
        model = CategoricalVAE(num_variables=2, num_classes=3, hidden_units=[16], input_dim=12,
                               estimator=estimator, init_stddev=0.1)
        before = model.elbo_terms(data)[0].numpy().mean()
        fit(model, data, TrainingSettings(epochs=3, batch_size=32, n_samples=2,
                                          learning_rate=0.01, jit_compile=False),
            progress=False)
        assert model.elbo_terms(data)[0].numpy().mean() > before + 0.5, estimator


@pytest.mark.parametrize("call, message", [
    (lambda m: estimator_terms(m, X, "rebar"), "estimator must be one of"),
    (lambda m: estimator_terms(m, X, "reinforce", 1), "n_samples >= 2"),
    (lambda m: estimator_terms(m, X, "reinforce", 2, baseline="mean"), "baseline must be"),
    (lambda m: gradient_moments(m, X, "relaxed", 1), "n_draws >= 2"),
])
def test_bad_arguments_are_named(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_exact_is_refused_for_a_code_too_large_to_enumerate():
    big = CategoricalVAE(num_variables=4, num_classes=10, hidden_units=(), input_dim=12,
                         estimator="relaxed")
    with pytest.raises(ValueError, match="codes"):
        estimator_terms(big, X, "exact")
