"""Discrete latents (Problem 4b): the relaxation, the exact ELBO by enumeration, the
categorical KL, clustering accuracy, and models that train."""

import itertools
import math

import numpy as np
import pytest

from vae_helpers import distributions as dist
from vae_helpers import evaluate, runs
from vae_helpers.backend import tf, tfd
from vae_helpers.discrete import (
    MAX_CODES,
    CategoricalVAE,
    all_codes,
    best_match_accuracy,
    category_examples,
    contingency_table,
)
from vae_helpers.runs import build_model
from vae_helpers.training import TrainingSettings, fit

pytestmark = pytest.mark.unit

TINY = dict(num_variables=2, num_classes=3, hidden_units=[4], input_dim=5)


def randomized(model, seed=0, scale=1.0):
    """Give every weight a random value of order ``scale`` (the default init is ~0.01)."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(0.0, scale, v.shape).astype(np.float32))
    return model


def numpy_forward(layers, x):
    for i, layer in enumerate(layers):
        x = x @ layer.w.numpy() + layer.b.numpy()
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def brute_force(model, x):
    """Exact ELBO, its terms and log p(x) of a Bernoulli-likelihood model, by looping over
    every code in NumPy."""
    m, k = model.num_variables, model.num_classes
    log_q_classes = log_softmax(numpy_forward(model.encoder.layers, x).reshape(-1, m, k))
    elbo, rec, kl, log_px = [], [], [], []
    for n in range(len(x)):
        terms, joint = [], []
        for code in itertools.product(range(k), repeat=m):
            onehot = np.eye(k)[list(code)].reshape(1, -1)
            logits = numpy_forward(model.decoder.layers, onehot)[0]
            log_lik = np.sum(x[n] * logits - np.logaddexp(0.0, logits))
            log_q = sum(log_q_classes[n, j, c] for j, c in enumerate(code))
            terms.append((math.exp(log_q), log_lik, log_q))
            joint.append(log_lik - m * math.log(k))
        r = sum(q * ll for q, ll, _ in terms)
        d = sum(q * (lq + m * math.log(k)) for q, _, lq in terms)
        rec.append(r), kl.append(d), elbo.append(r - d)
        log_px.append(np.logaddexp.reduce(joint))
    return np.array(elbo), np.array(rec), np.array(kl), np.array(log_px)


@pytest.fixture(scope="module")
def tiny():
    model = randomized(CategoricalVAE(**TINY), seed=1)
    x = (np.random.default_rng(2).uniform(size=(7, 5)) < 0.5).astype(np.float32)
    return model, x


def test_exact_elbo_and_log_likelihood_equal_a_brute_force_sum(tiny):
    model, x = tiny
    elbo, rec, kl, log_px = brute_force(model, x)
    got = [t.numpy() for t in model.elbo_terms(x)]
    np.testing.assert_allclose(got[0], elbo, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], rec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], kl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.exact_log_likelihood(x).numpy(), log_px, rtol=1e-5,
                               atol=1e-5)
    assert np.all(got[0] <= log_px + 1e-5)          # the ELBO is a lower bound
    # exact: no sampling, so the seed and the sample count change nothing
    np.testing.assert_array_equal(model.compute_elbo(x, 5, seed=3).numpy(),
                                  model.compute_elbo(x, 1, seed=4).numpy())


def test_categorical_kl_against_uniform_prior_is_the_closed_form(tiny):
    model, x = tiny
    q = model.infer(x)
    probs = q.distribution.probs_parameter().numpy()              # [B, M, K]
    closed = np.sum(probs * np.log(probs), axis=(1, 2)) + model.num_variables * math.log(
        model.num_classes)
    np.testing.assert_allclose(dist.kl_divergence(q, model.prior()).numpy(), closed,
                               rtol=1e-5, atol=1e-6)
    assert np.all(closed >= 0) and np.all(closed <= model.num_variables * math.log(3) + 1e-6)


def test_the_kl_of_each_variable_sums_to_the_kl_term(tiny):
    model, x = tiny
    per_variable = model.kl_per_variable(x)
    assert per_variable.shape == (7, 2) and np.all(per_variable >= -1e-6)
    np.testing.assert_allclose(per_variable.sum(1), model.elbo_terms(x)[2].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_iwae_of_a_discrete_model_climbs_to_the_exact_log_likelihood(tiny):
    _, x = tiny
    # weights of order 0.5: q covers the codes well enough for one estimate with k = 4000
    # to scatter by about 0.01 nats around log p(x)
    model = randomized(CategoricalVAE(**TINY), seed=1, scale=0.5)
    exact = model.exact_log_likelihood(x).numpy()
    elbo = model.compute_elbo(x).numpy()
    iwae_4000 = np.mean([evaluate.iwae_log_likelihood(model, x, k=4000, per_example=True,
                                                      seed=s) for s in range(5)], axis=0)
    assert np.all(exact - elbo > 0.1)                    # a gap the estimate must close
    np.testing.assert_allclose(iwae_4000, exact, atol=0.02)


def test_the_multinomial_iwae_shortcut_is_the_same_estimator_as_sampling(tiny):
    _, x = tiny
    model = randomized(CategoricalVAE(**TINY), seed=1, scale=0.5)
    runs_ = 40

    def estimates():
        return np.array([evaluate.iwae_log_likelihood(model, x, k=20, per_example=True, seed=s)
                         for s in range(runs_)])

    fast = estimates()
    model.enumerable = False        # now evaluate draws k one-hot samples of q, one by one
    slow = estimates()
    model.enumerable = True
    se = np.sqrt((fast.var(0, ddof=1) + slow.var(0, ddof=1)) / runs_)
    assert np.all(np.abs(fast.mean(0) - slow.mean(0)) < 5 * se + 1e-4), (fast.mean(0),
                                                                          slow.mean(0), se)
    np.testing.assert_allclose(fast.std(0), slow.std(0), rtol=0.5)   # the same spread too
    # a lower bound in expectation
    fast_se = fast.std(0, ddof=1) / np.sqrt(runs_)
    assert np.all(fast.mean(0) <= model.exact_log_likelihood(x).numpy() + 5 * fast_se)


@pytest.mark.parametrize("temperature", [5.0, 1.0, 0.3, 0.05])
def test_relaxed_samples_lie_on_the_simplex(temperature):
    logits = tf.constant([[2.0, 0.0, -1.0, 0.5]])
    z = tfd.RelaxedOneHotCategorical(temperature, logits=logits).sample(2000, seed=(1, 2))
    z = z.numpy()
    assert np.all(z >= 0) and np.allclose(z.sum(-1), 1.0, atol=1e-5)


def test_relaxed_samples_approach_one_hot_vectors_as_the_temperature_falls():
    model = randomized(CategoricalVAE(num_variables=3, num_classes=4, hidden_units=[8],
                                      input_dim=6, estimator="relaxed"), seed=3, scale=0.5)
    params = model.encoder(tf.ones([5, 6]))
    distance = []
    for temperature in (5.0, 1.0, 0.5, 0.1, 0.02):
        z = model.posterior.relaxed_sample(params, temperature, 500, seed=(4, 5)).numpy()
        distance.append(np.mean(1.0 - z.max(-1)))                  # 0 for a one-hot vector
    assert all(a > b for a, b in zip(distance, distance[1:], strict=False)), distance
    assert distance[-1] < 0.01 and distance[0] > 0.3
    # at low temperature the argmax frequencies are the categorical probabilities
    z = model.posterior.relaxed_sample(params, 0.05, 20000, seed=(6, 7)).numpy()
    freq = np.mean(z == z.max(-1, keepdims=True), axis=0)
    probs = model.infer(tf.ones([5, 6])).distribution.probs_parameter().numpy()
    np.testing.assert_allclose(freq, probs, atol=0.02)


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_the_philox_relaxed_sampler_draws_tfps_relaxed_distribution(temperature):
    from scipy import stats

    model = randomized(CategoricalVAE(num_variables=2, num_classes=4, hidden_units=[8],
                                      input_dim=6, estimator="relaxed"), seed=8, scale=0.5)
    params = model.encoder(tf.ones([1, 6]))
    ours = model.posterior.relaxed_sample(params, temperature, 20000, seed=(3, 4)).numpy()
    theirs = model.posterior.relaxed(params, temperature).sample(20000, seed=(5, 6)).numpy()
    assert ours.shape == theirs.shape == (20000, 1, 2, 4)
    for j in range(2):
        for k in range(4):
            result = stats.ks_2samp(ours[:, 0, j, k], theirs[:, 0, j, k])
            assert result.pvalue > 1e-3, (j, k, result)
    # its density is TFP's: the log-density of our draws has the distribution of TFP's own
    relaxed = model.posterior.relaxed(params, temperature)
    assert stats.ks_2samp(relaxed.log_prob(ours).numpy()[:, 0],
                          relaxed.log_prob(theirs).numpy()[:, 0]).pvalue > 1e-3
    with tf.GradientTape() as tape:
        tape.watch(params)
        z = model.posterior.relaxed_sample(params, temperature, 4, seed=(1, 1))
        value = tf.reduce_sum(z[..., 0])
    assert np.any(tape.gradient(value, params).numpy() != 0)      # reparameterized


def test_temperature_is_annealed_exponentially_then_held():
    model = CategoricalVAE(estimator="relaxed", initial_temperature=2.0,
                           final_temperature=0.5, anneal_epochs=4.0, hidden_units=[8])
    got = [float(model.temperature(e)) for e in (0.0, 2.0, 4.0, 10.0)]
    np.testing.assert_allclose(got, [2.0, 1.0, 0.5, 0.5], rtol=1e-6)


def test_relaxed_training_terms_use_the_relaxation_and_report_the_true_elbo(tiny):
    model = randomized(CategoricalVAE(**TINY, estimator="relaxed"), seed=1)
    model_exact, x = tiny
    objective, rec, kl = model.training_terms(x, n_samples=4, seed=0, epoch=0.0)
    assert objective.shape == (7,)
    # the KL of the relaxed objective is the categorical one, the ELBO is the exact one
    np.testing.assert_allclose(kl.numpy(), model.elbo_terms(x)[2].numpy(), rtol=1e-6)
    np.testing.assert_allclose(model.compute_elbo(x).numpy(), brute_force(model, x)[0],
                               rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model.training_terms(x, 4, seed=0, epoch=1.0)[0])
    grads = tape.gradient(loss, model.encoder.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)


def test_large_codes_are_estimated_with_one_hot_samples():
    model = randomized(CategoricalVAE(num_variables=5, num_classes=5, hidden_units=[8],
                                      input_dim=6, estimator="relaxed"), seed=4, scale=0.3)
    assert 5**5 > MAX_CODES and not model.enumerable
    x = (np.random.default_rng(0).uniform(size=(3, 6)) < 0.5).astype(np.float32)
    many = model.compute_elbo(x, n_samples=20000, seed=1).numpy()
    again = model.compute_elbo(x, n_samples=20000, seed=2).numpy()
    np.testing.assert_allclose(many, again, atol=0.05)
    with pytest.raises(ValueError, match="relaxed"):
        CategoricalVAE(num_variables=5, num_classes=5, estimator="exact")


def test_all_codes_enumerates_every_one_hot_code_once():
    codes = all_codes(2, 3)
    assert codes.shape == (9, 2, 3)
    assert np.all(codes.sum(-1) == 1)
    assert len({c.tobytes() for c in codes}) == 9


@pytest.mark.parametrize("estimator", ["exact", "relaxed"])
def test_a_short_training_run_raises_the_true_elbo(estimator, blob_digits):
    digits, _ = blob_digits(templates=4, density=0.3, noise=40)
    model = CategoricalVAE(num_classes=4, hidden_units=[64], estimator=estimator,
                           anneal_epochs=5.0)
    held_out = evaluate.prepare_eval_data(digits[-256:], "binarized")
    before = float(np.mean(model.compute_elbo(held_out)))
    fit(model, digits[:1024], TrainingSettings(epochs=15, batch_size=128, learning_rate=3e-3),
        progress=False)
    after = float(np.mean(model.compute_elbo(held_out)))
    assert after > before + 100, (before, after)


def test_runs_write_and_reload_a_discrete_model(fake_mnist, tmp_path):
    metrics = runs.train_run(tmp_path / "run", epochs=1, iwae_k=20, n_train=512, n_test=64,
                             data_path=fake_mnist, progress=False, latent_type="categorical",
                             num_classes=10, hidden_units=[32])
    assert metrics["data_variant"] == "binarized"
    assert metrics["iwae_log_likelihood"] <= metrics["exact_log_likelihood"] + 0.05
    assert metrics["test_elbo"] <= metrics["exact_log_likelihood"] + 1e-3
    model = runs.load_model(tmp_path / "run")
    assert isinstance(model, CategoricalVAE) and model.spec()["latent_type"] == "categorical"
    assert build_model(**model.config).config == model.config


def test_contingency_table_and_best_match_against_every_permutation():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 300)
    clusters = np.where(rng.uniform(size=300) < 0.7, (labels + 1) % 4, rng.integers(0, 4, 300))
    table = contingency_table(labels, clusters, 4, 4)
    assert table.sum() == 300 and table[2, 3] == np.sum((labels == 2) & (clusters == 3))
    best = max(np.mean(np.array(perm)[clusters] == labels)
               for perm in itertools.permutations(range(4)))
    accuracy, mapping = best_match_accuracy(table)
    assert accuracy == pytest.approx(best)
    assert mapping == {(c + 1) % 4: c for c in range(4)}


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=1), "at least 2"),
    (dict(num_variables=0), "positive integer"),
    (dict(estimator="rebar"), "estimator"),
    (dict(initial_temperature=0.5, final_temperature=1.0), "annealed"),
    (dict(anneal_epochs=0), "anneal_epochs"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CategoricalVAE(**kwargs)


def test_category_examples_put_the_decoded_class_before_the_images_assigned_to_it():
    model = randomized(CategoricalVAE(num_classes=3, hidden_units=[4], input_dim=5), seed=6)
    x = (np.random.default_rng(7).uniform(size=(40, 5)) < 0.5).astype(np.float32)
    images = category_examples(model, x, n_examples=4)
    assert images.shape == (3 * 5, 5)
    assigned = model.assign(x)[:, 0]
    for c in range(3):
        row = images[c * 5:(c + 1) * 5]
        np.testing.assert_allclose(row[0], model.decode(np.eye(3, dtype=np.float32)[[c]][None])
                                   .numpy()[0], rtol=1e-6)
        members = x[assigned == c][:4]
        np.testing.assert_array_equal(row[1:1 + len(members)], members)
        assert np.all(row[1 + len(members):] == 1.0)         # blank tiles fill the row


def test_variable_sweeps_change_one_variable_at_a_time(tiny):
    from vae_helpers.discrete import variable_sweeps

    model, _ = tiny                                           # 2 variables, 3 classes
    images = variable_sweeps(model, [2, 1])
    assert images.shape == (2 * 3, 5)
    eye = np.eye(3, dtype=np.float32)
    for j in range(2):
        for c in range(3):
            classes = [2, 1]
            classes[j] = c
            np.testing.assert_allclose(images[j * 3 + c],
                                       model.decode(eye[classes][None]).numpy()[0], rtol=1e-6)
    with pytest.raises(ValueError, match="class indices"):
        variable_sweeps(model, [3, 0])


def test_variable_sweeps_take_one_base_code_per_row(tiny):
    from vae_helpers.discrete import variable_sweeps

    model, _ = tiny                                           # 2 variables, 3 classes
    bases = np.array([[2, 1], [0, 2]])                        # row 0 sweeps variable 1
    images = variable_sweeps(model, bases, variables=[1, 0])
    eye = np.eye(3, dtype=np.float32)
    for row, (j, base) in enumerate(zip([1, 0], bases, strict=True)):
        for c in range(3):
            classes = base.copy()
            classes[j] = c
            np.testing.assert_allclose(images[row * 3 + c],
                                       model.decode(eye[classes][None]).numpy()[0], rtol=1e-6)
    # the rows start from different images, unlike with one base for all
    assert not np.allclose(images[0 * 3 + 0], images[1 * 3 + 0])
    with pytest.raises(ValueError, match="once per swept variable"):
        variable_sweeps(model, bases[:1], variables=[1, 0])
