"""ELBO and IWAE against an exact log-likelihood: probabilistic PCA.

With a linear decoder and a Gaussian likelihood, x = W z + b + noise with
z ~ N(0, I) and noise ~ N(0, s^2 I), the marginal is exact:
p(x) = N(x; b, W W^T + s^2 I) (Tipping & Bishop, 1999). When the columns of W are
orthogonal the exact posterior is diagonal,
q*(z | x) = N(M^{-1} W^T (x - b), s^2 M^{-1}) with M = W^T W + s^2 I,
and a linear encoder can represent it exactly.
"""

import math

import numpy as np
import pytest

from vae_helpers import evaluate
from vae_helpers.backend import tf
from vae_helpers.model import VAE

pytestmark = pytest.mark.unit

D, P, S2 = 6, 2, 0.1


def _inverse_softplus(y):
    return y + np.log(-np.expm1(-y))


@pytest.fixture(scope="module")
def ppca():
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(D, P)))
    w = q * np.array([2.0, 1.0])           # orthogonal columns
    b = rng.normal(size=D)
    model = VAE(latent_dim=P, hidden_units=(), input_dim=D, likelihood="gaussian",
                output_activation="linear", init_variance=S2)
    model.decoder.layers[0].w.assign(w.T.astype("float32"))
    model.decoder.layers[0].b.assign(b.astype("float32"))
    s2 = float(model.likelihood.variance)
    m = w.T @ w + s2 * np.eye(P)
    a = np.linalg.solve(m, w.T)             # posterior mean = a (x - b)
    post_var = s2 / np.diag(m)              # diagonal because W^T W is diagonal
    n = 400
    z = rng.normal(size=(n, P))
    x = (z @ w.T + b + math.sqrt(s2) * rng.normal(size=(n, D))).astype("float32")
    cov = w @ w.T + s2 * np.eye(D)
    diff = x - b
    log_px = -0.5 * (D * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                     + np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff))
    return dict(model=model, a=a, b=b, post_var=post_var, x=x, log_px=log_px)


def _set_encoder(model, a, b, post_var, shift=0.0, var_scale=1.0):
    raw = _inverse_softplus(post_var * var_scale - 1e-6)
    w_enc = np.concatenate([a.T, np.zeros((D, P))], axis=1)
    b_enc = np.concatenate([-a @ b + shift, raw])
    model.encoder.layers[0].w.assign(w_enc.astype("float32"))
    model.encoder.layers[0].b.assign(b_enc.astype("float32"))


def test_exact_posterior_makes_every_importance_weight_the_likelihood(ppca):
    model, x, log_px = ppca["model"], ppca["x"], ppca["log_px"]
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"])
    for k in (1, 10):
        iwae = evaluate.iwae_log_likelihood(model, x, k=k, per_example=True)
        np.testing.assert_allclose(iwae, log_px, atol=2e-3)
    # The ELBO's reconstruction term is a Monte Carlo average (2000 samples here),
    # so it matches per image only up to its noise, and on average much closer.
    elbo = evaluate.evaluate_elbo(model, x, n_samples=2000, per_example=True)["elbo"]
    np.testing.assert_allclose(elbo, log_px, atol=0.2)
    assert abs(elbo.mean() - log_px.mean()) < 0.01


def test_ragged_last_chunk_is_weighted_correctly(ppca):
    """k not a multiple of the chunk: padding samples must not count (log w = log p(x))."""
    model, x, log_px = ppca["model"], ppca["x"][:50], ppca["log_px"][:50]
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"])
    iwae = evaluate.iwae_log_likelihood(model, x, k=7, chunk=3, batch_size=16,
                                        per_example=True)
    np.testing.assert_allclose(iwae, log_px, atol=2e-3)


def test_iwae_rises_with_k_towards_the_exact_log_likelihood(ppca):
    model, x, log_px = ppca["model"], ppca["x"], ppca["log_px"]
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"], shift=0.6, var_scale=3.0)
    exact = log_px.mean()
    elbo = evaluate.evaluate_elbo(model, x, n_samples=500)["elbo"]
    bounds = [evaluate.iwae_log_likelihood(model, x, k=k, seed=1) for k in (10, 100, 1000)]
    values = [elbo, *bounds]
    assert all(lo < hi for lo, hi in zip(values, values[1:], strict=False)), values
    assert bounds[-1] <= exact + 0.01
    assert exact - bounds[-1] < 0.1 * (exact - elbo)


def test_families_without_standard_normal_noise_are_sampled_by_tfp(ppca, monkeypatch):
    """The fallback for other variational families: TFP's own sampler, per chunk."""
    model = VAE(**ppca["model"].config)
    for mine, theirs in zip(model.variables, ppca["model"].variables, strict=True):
        mine.assign(theirs)
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"])
    monkeypatch.setattr(evaluate.dist, "has_standard_normal_noise", lambda q: False)
    iwae = evaluate.iwae_log_likelihood(model, ppca["x"][:20], k=7, chunk=3, per_example=True)
    np.testing.assert_allclose(iwae, ppca["log_px"][:20], atol=2e-3)


def test_iwae_memory_bound_and_argument_checks(ppca):
    model, x = ppca["model"], ppca["x"][:20]
    a = evaluate.iwae_log_likelihood(model, x, k=64, chunk=8, batch_size=5, seed=3)
    b = evaluate.iwae_log_likelihood(model, x, k=64, chunk=8, batch_size=5, seed=3)
    assert a == b
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            evaluate.iwae_log_likelihood(model, x, k=bad)


def test_reconstruction_term_is_the_expectation_under_q_not_the_value_at_its_mean(ppca):
    """E_q[log N(x; W z + b, s^2 I)] = log N(x; W mu + b, s^2 I) - tr(W S W^T) / (2 s^2)."""
    model, x = ppca["model"], ppca["x"][:100]
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"], shift=0.3, var_scale=3.0)
    q = model.infer(x)
    mu, var = q.mean().numpy(), q.variance().numpy()
    w = model.decoder.layers[0].w.numpy().T          # [D, P]
    s2 = float(model.likelihood.variance)
    resid = x - (mu @ w.T + model.decoder.layers[0].b.numpy())
    at_mean = -0.5 * (D * np.log(2 * np.pi * s2) + np.sum(resid**2, -1) / s2)
    expected = at_mean - np.sum(var * np.sum(w**2, 0), -1) / (2 * s2)
    rec = evaluate.evaluate_elbo(model, x, n_samples=40_000, per_example=True)["reconstruction"]
    np.testing.assert_allclose(rec, expected, atol=0.2)       # per image: Monte Carlo noise
    assert abs(rec.mean() - expected.mean()) < 0.02
    assert np.all(at_mean - expected > 0.5)           # decoding the mean would be far off


def test_bits_per_dim():
    # a uniform density on [0,1)^D (log p = 0) spends exactly 8 bits per 8-bit pixel
    assert evaluate.bits_per_dim(0.0, 784) == pytest.approx(8.0)
    assert evaluate.bits_per_dim(784 * math.log(2), 784) == pytest.approx(7.0)
    assert evaluate.bits_per_dim(-784 * math.log(2), 784, dequantized=False) == pytest.approx(1.0)


def test_evaluate_reports_all_metrics_on_pixels():
    model = VAE(latent_dim=2, hidden_units=[32])
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    out = evaluate.evaluate(model, pixels, k=16)
    assert out["data_variant"] == "dequantized" and out["n_test"] == 40 and out["iwae_k"] == 16
    assert out["test_elbo"] == pytest.approx(out["test_reconstruction"] - out["test_kl"], rel=1e-5)
    assert out["iwae_log_likelihood"] >= out["test_elbo"] - 1.0
    assert out["bits_per_dim_elbo"] == pytest.approx(evaluate.bits_per_dim(out["test_elbo"], 784))
    again = evaluate.evaluate(model, pixels, k=16)
    assert again == out  # fixed test transform and seeds
    assert out["test_transform_seed"] == evaluate.TEST_SEED
    # the z samples follow `seed`; the test data do not
    other = evaluate.evaluate(model, pixels, k=16, seed=7)
    assert other["test_elbo"] != out["test_elbo"]
    np.testing.assert_array_equal(evaluate.prepare_eval_data(pixels, "binarized").numpy(),
                                  evaluate.prepare_eval_data(pixels, "binarized").numpy())
    binary = evaluate.evaluate(VAE(likelihood="bernoulli", hidden_units=[32]), pixels, k=0)
    assert binary["data_variant"] == "binarized" and binary["iwae_log_likelihood"] is None
    assert "bits_per_dim_elbo" not in binary
    prepared = evaluate.prepare_eval_data(pixels, "binarized").numpy()
    assert set(np.unique(prepared)) <= {0.0, 1.0}


def test_iwae_is_deterministic_and_independent_of_batch_and_chunk_sizes(ppca):
    """Image n's samples depend on the seed, n and k only; batch and chunk cut up the work."""
    model, x = ppca["model"], ppca["x"][:30]
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"], shift=0.6, var_scale=3.0)
    ref = evaluate.iwae_log_likelihood(model, x, k=40, per_example=True, seed=5)
    assert ref.shape == (30,) and ref.dtype == np.float32
    np.testing.assert_array_equal(
        evaluate.iwae_log_likelihood(model, x, k=40, per_example=True, seed=5), ref)
    for batch_size, chunk in ((7, 9), (1, 40)):  # ragged batches and chunks
        again = evaluate.iwae_log_likelihood(model, x, k=40, batch_size=batch_size, chunk=chunk,
                                             per_example=True, seed=5)
        np.testing.assert_allclose(again, ref, rtol=1e-6, atol=1e-5)
    other = evaluate.iwae_log_likelihood(model, x, k=40, per_example=True, seed=6)
    assert np.all(other != ref)


def test_iwae_is_the_same_eager_as_a_graph_and_with_xla(ppca, monkeypatch):
    model, x = ppca["model"], ppca["x"][:4]
    _set_encoder(model, ppca["a"], ppca["b"], ppca["post_var"], shift=0.6, var_scale=3.0)
    assert 4 * 12 < evaluate.XLA_MIN_SAMPLES                   # a graph without XLA
    graph = evaluate.iwae_log_likelihood(model, x, k=12, chunk=5, batch_size=3,
                                         per_example=True)
    monkeypatch.setattr(evaluate, "XLA_MIN_SAMPLES", 1)        # compiled with XLA
    compiled = evaluate.iwae_log_likelihood(model, x, k=12, chunk=5, batch_size=3,
                                            per_example=True)
    np.testing.assert_allclose(graph, compiled, rtol=1e-5, atol=1e-4)
    tf.config.run_functions_eagerly(True)
    try:
        eager = evaluate.iwae_log_likelihood(model, x, k=12, chunk=5, batch_size=3,
                                             per_example=True)
    finally:
        tf.config.run_functions_eagerly(False)
    np.testing.assert_allclose(eager, compiled, rtol=1e-5, atol=1e-4)


def _relu_decoder_model(hidden, seed=0):
    """A 2-D VAE whose first decoder layer's switch lines cut through narrow posteriors."""
    rng = np.random.default_rng(seed)
    model = VAE(latent_dim=2, hidden_units=hidden, input_dim=D, output_activation="linear")
    first = model.decoder.layers[0]
    first.w.assign(rng.normal(size=first.w.shape).astype("float32"))
    first.b.assign(rng.normal(scale=2.0, size=first.b.shape).astype("float32"))
    for layer in model.decoder.layers[1:]:
        layer.w.assign(rng.normal(scale=0.3, size=layer.w.shape).astype("float32"))
        layer.b.assign(rng.normal(scale=0.1, size=layer.b.shape).astype("float32"))
    enc = model.encoder.layers[-1]  # posterior sd about 0.08: some lines cross each cloud
    enc.b.assign(np.r_[np.zeros(2), np.full(2, -5.0)].astype("float32"))
    return model


@pytest.mark.parametrize("hidden", [[64], [48, 16]])
def test_factored_first_layer_equals_the_plain_decoder(hidden):
    model = _relu_decoder_model(hidden)
    layers = model.decoder.layers
    rng = np.random.default_rng(1)
    for centre, scale in (((0.3, -0.2), 0.15), ((1.0, 0.5), 0.5), ((0.0, 0.0), 3.0)):
        z = tf.constant(centre + scale * rng.normal(size=(500, 2)), tf.float32)
        on, switching = evaluate._split_units(layers[0], z)
        pre = (z @ layers[0].w + layers[0].b).numpy()
        off = ~(on.numpy() | switching.numpy())
        assert np.all(pre[:, on.numpy()] >= 0) and np.all(pre[:, off] <= 0)
        assert 0 < switching.numpy().sum()           # some units switch, several groups of 4
        out = evaluate._factored_decoder(layers, z, on, switching, group=4)
        np.testing.assert_allclose(out.numpy(), model.decoder(z).numpy(), rtol=1e-5, atol=1e-5)


def test_iwae_with_the_factored_decoder_equals_the_plain_one(monkeypatch):
    model = _relu_decoder_model([64])
    x = np.random.default_rng(2).normal(size=(6, D)).astype("float32")
    assert evaluate._factorable(model)
    z = model.infer(x).sample(300, seed=(1, 2))
    for i in range(6):  # few enough units switch for the factored path (at most 64 / 4)
        assert 0 < evaluate._split_units(model.decoder.layers[0], z[:, i])[1].numpy().sum() <= 16
    factored = evaluate.iwae_log_likelihood(model, x, k=600, chunk=300, per_example=True)
    monkeypatch.setattr(evaluate, "FACTOR_MIN_CHUNK", 10**9)
    plain = evaluate.iwae_log_likelihood(model, x, k=600, chunk=300, per_example=True)
    np.testing.assert_allclose(factored, plain, rtol=1e-5, atol=1e-4)
