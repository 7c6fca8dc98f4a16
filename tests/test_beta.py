"""A fixed KL weight β: what training ascends, what is reported, what a run records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vae_helpers import io
from vae_helpers.backend import tf, tfd
from vae_helpers.discrete import CategoricalVAE
from vae_helpers.model import VAE
from vae_helpers.runs import build_model, load_model, train_run
from vae_helpers.seeding import stateless_seed
from vae_helpers.training import TrainingSettings, fit

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(7)
X = (RNG.random((16, 20)) < 0.4).astype(np.float32)     # binary "images" of 20 pixels


def small(beta=1.0, **options):
    return VAE(latent_dim=2, hidden_units=[8], likelihood="bernoulli", input_dim=20,
               init_stddev=0.3, seed=1, beta=beta, **options)


def test_beta_one_is_the_elbo_bit_for_bit():
    for model in (small(), CategoricalVAE(num_variables=2, num_classes=3, hidden_units=[8],
                                          input_dim=20, init_stddev=0.3)):
        assert model.beta == 1.0 and model.config["beta"] == 1.0
        objective = model.training_terms(X, n_samples=3, seed=5)[0].numpy()
        elbo = model.elbo_terms(X, n_samples=3, seed=5)[0].numpy()
        np.testing.assert_array_equal(objective, elbo)


@pytest.mark.parametrize("beta", [0.0, 0.25, 4.0])
def test_objective_is_reconstruction_minus_beta_kl(beta):
    model = small(beta)
    objective, rec, kl = (t.numpy() for t in model.training_terms(X, n_samples=4, seed=9))
    # the same terms computed directly with TFP, from the same seed
    q = model.infer(X)
    z = q.sample(4, seed=stateless_seed(9))
    direct_rec = tf.reduce_mean(model.generate(z).log_prob(X), axis=0).numpy()
    direct_kl = tfd.kl_divergence(q, model.prior()).numpy()
    np.testing.assert_allclose(rec, direct_rec, rtol=1e-6)
    np.testing.assert_allclose(kl, direct_kl, rtol=1e-6)
    np.testing.assert_allclose(objective, direct_rec - beta * direct_kl, rtol=1e-6, atol=1e-6)
    # the reported ELBO does not move with beta
    elbo = model.elbo_terms(X, n_samples=4, seed=9)[0].numpy()
    np.testing.assert_allclose(elbo, direct_rec - direct_kl, rtol=1e-6, atol=1e-6)


def test_categorical_objective_is_reconstruction_minus_beta_kl():
    for estimator in ("exact", "relaxed"):
        model = CategoricalVAE(num_variables=2, num_classes=3, hidden_units=[8], input_dim=20,
                               estimator=estimator, init_stddev=0.3, beta=3.0)
        objective, rec, kl = (t.numpy() for t in model.training_terms(X, 2, seed=1))
        q = model.infer(X)
        np.testing.assert_allclose(kl, tfd.kl_divergence(q, model.prior()).numpy(), rtol=1e-6)
        np.testing.assert_allclose(objective, rec - 3.0 * kl, rtol=1e-6)


class _WeightedByHand(VAE):
    """β = 1 as far as the loop knows; the KL weight is applied here instead."""

    def __init__(self, weight, **options):
        super().__init__(**options)
        self.weight = weight

    def training_terms(self, x, n_samples=1, seed=None, epoch=None):
        _, rec, kl = self.elbo_terms(x, n_samples, seed)
        return rec - self.weight * kl, rec, self.weight * kl


@pytest.mark.parametrize("warmup", [0.0, 2.0])
def test_fit_ascends_reconstruction_minus_beta_kl(warmup):
    """The loop trains a β model as it trains a model whose own objective carries β, with
    and without a KL warm-up (whose weight then multiplies β)."""
    options = dict(latent_dim=2, hidden_units=[8], likelihood="bernoulli", input_dim=20,
                   init_stddev=0.3, seed=1)
    settings = TrainingSettings(epochs=2, batch_size=8, seed=2, kl_warmup_epochs=warmup,
                                jit_compile=False)
    data = np.tile(X, (2, 1))
    with_beta, by_hand, plain = VAE(beta=3.0, **options), _WeightedByHand(3.0, **options), \
        VAE(**options)
    histories = [fit(m, data, settings, progress=False) for m in (with_beta, by_hand, plain)]
    for a, b in zip(with_beta.trainable_variables, by_hand.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in
               zip(with_beta.trainable_variables, plain.trainable_variables, strict=True))
    # the history's training ELBO is reconstruction - kl, not the weighted objective
    for row in histories[0].rows:
        assert row["train_elbo"] == pytest.approx(
            row["train_reconstruction"] - row["train_kl"], rel=1e-5)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "2"])
def test_bad_beta_is_refused_with_its_name(bad):
    with pytest.raises(ValueError, match="beta"):
        small(bad)
    with pytest.raises(ValueError, match="beta"):
        CategoricalVAE(num_classes=3, input_dim=20, beta=bad)


def test_beta_goes_through_a_config_and_back():
    for model in (small(0.5), CategoricalVAE(num_classes=3, input_dim=20, beta=0.5)):
        config = json.loads(json.dumps(model.config))
        assert config["beta"] == 0.5
        assert build_model(**config).beta == 0.5


def test_a_run_records_beta_and_restores_it(tmp_path, fake_mnist):
    tiny = dict(epochs=1, batch_size=128, iwae_k=0, n_train=256, n_test=128, seed=3,
                progress=False, hidden_units=[16], data_path=fake_mnist)
    out = tmp_path / "run"
    train_run(out, beta=0.25, **tiny)
    config = io.read_json(out / "config.json")
    assert config["model"]["beta"] == 0.25
    assert io.read_json(out / "checkpoint" / "fit.json")["model"]["beta"] == 0.25
    assert load_model(out).beta == 0.25
    # resuming with another beta is another run: refused, naming what differs
    with pytest.raises(ValueError, match="model"):
        train_run(out, beta=1.0, resume=True, **{**tiny, "epochs": 2})


def test_a_checkpoint_written_before_beta_resumes_as_beta_one(tmp_path, fake_mnist):
    tiny = dict(batch_size=128, iwae_k=0, n_train=256, n_test=128, seed=3,
                progress=False, hidden_units=[16], data_path=fake_mnist)
    out = tmp_path / "run"
    train_run(out, epochs=1, **tiny)
    for path in (out / "config.json", out / "checkpoint" / "fit.json"):
        content = io.read_json(path)
        del content["model"]["beta"]
        io.write_json(path, content)
    assert load_model(out).beta == 1.0
    metrics = train_run(out, epochs=2, resume=True, **tiny)
    assert metrics["epochs"] == 2
