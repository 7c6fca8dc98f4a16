"""The student module's solution passes every visible check; each deliberate mistake is
caught by the check of its own task, first; stubs stop with the task's name."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
from pathlib import Path

import numpy as np
import pytest

from vae_helpers import data
from vae_helpers import model as reference_model
from vae_helpers.backend import tfd
from vae_helpers.course import checks, student

pytestmark = pytest.mark.unit

MODULE = Path(__file__).resolve().parent.parent / "notebooks" / "vae_homework.py"
SOURCE = MODULE.read_text(encoding="utf-8")
_count = itertools.count()


def load(source: str, folder: Path):
    """``source`` imported as a fresh module from a file in ``folder``."""
    path = folder / f"vae_homework_{next(_count)}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_failure(module) -> str:
    """The first FAIL line of the checks, run in the homework's order until one fails."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        checks.check_all(module, stop=True)
    fails = [line for line in printed.getvalue().splitlines() if line.startswith("FAIL")]
    return fails[0] if fails else ""


@pytest.fixture(scope="module")
def solution():
    spec = importlib.util.spec_from_file_location("vae_homework_solution", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_solution_passes_every_check(solution, capsys):
    assert checks.check_all(solution)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "PASS  kit", "PASS  1a", "PASS  1b", "PASS  1c", "PASS  1d", "PASS  2a", "PASS  2b",
        "PASS  4a"]


MISTAKES = {
    "the KL without the ½ on the trace term": (
        [("0.5 * (trace + mahalanobis - k + logdet)", "trace + 0.5 * (mahalanobis - k + logdet)"),
         ("0.5 * tf.reduce_sum(variance + mu**2 - 1.0 - tf.math.log(variance), axis=-1)",
          "tf.reduce_sum(variance + 0.5 * (mu**2 - 1.0 - tf.math.log(variance)), axis=-1)")],
        "FAIL  1c: gaussian_kl is off by ½ tr(Σ₁⁻¹Σ₀): the trace term is missing its factor ½"),
    "the σ-derivative in place of the σ² one": (
        [("grad_variance = (-pixels / (2.0 * variance)\n"
          "                     + tf.reduce_sum(residual**2, axis=-1) / (2.0 * variance**2))",
          "grad_variance = (-pixels / tf.sqrt(variance)\n"
          "                     + tf.reduce_sum(residual**2, axis=-1) / variance**1.5)")],
        "FAIL  1b: grad_variance is the derivative with respect to σ"),
    "a missing N/|B| scale": (
        [("return float(n_total) / batch_size * tf.reduce_sum(per_image)",
          "return tf.reduce_sum(per_image)")],
        "FAIL  1a: the sum over the minibatch is not scaled by N/|B|"),
    "z drawn through tf.stop_gradient": (
        [("return mu + tf.sqrt(variance) * eps",
          "return tf.stop_gradient(mu + tf.sqrt(variance) * eps)")],
        "FAIL  1d: no gradient flows from z back to μ and σ²"),
    "weights with standard deviation 1": (
        [("generator.normal(shape, stddev=init_stddev)", "generator.normal(shape, stddev=1.0)")],
        "FAIL  2a: encoder/hidden/kernel starts with mean"),
    "variances allowed to go negative (q)": (
        [("scale_diag=tf.sqrt(posterior_variance(rho))", "scale_diag=tf.sqrt(rho)")],
        "FAIL  2a: the variances go negative"),
    "variances allowed to go negative (p)": (
        [("tf.sqrt(likelihood_variance(v[\"likelihood/rho\"]))",
          "tf.sqrt(v[\"likelihood/rho\"] + 1.0)")],
        "FAIL  2a: the variances go negative"),
    "vae_helpers.model.VAE imported": (
        [("from vae_helpers.progress import progress_bar\n",
          "from vae_helpers.progress import progress_bar\n"
          "from vae_helpers.model import VAE as _V\n")],
        "FAIL  kit: vae_homework"),
    "gradient descent on the ELBO": (
        [("            loss = -elbo\n", "            loss = elbo\n")],
        "FAIL  2b: 30 steps took the ELBO from"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_named_by_the_first_failing_check(mistake, tmp_path):
    source = SOURCE
    replacements, expected = MISTAKES[mistake]
    for old, new in replacements:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    failure = first_failure(load(source, tmp_path))
    assert failure.startswith(expected), failure


def test_the_model_variant_names_uses_of_the_reference_beyond_imports(tmp_path):
    source = SOURCE.replace("class VAE(tf.Module):",
                            "import vae_helpers.model as _m\n\n\nclass VAE(_m.VAE):")
    module = load(source, tmp_path)
    assert first_failure(module).startswith("FAIL  kit: vae_homework")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert not checks.check_vae(module.VAE)
    assert "comes from (or builds on) vae_helpers" in printed.getvalue()


def test_a_stub_stops_with_its_task_and_errors_become_one_fail_line(tmp_path, capsys):
    stubbed, count = student.strip_solutions(SOURCE, "vae_homework.py")
    assert count == len(student.solution_regions(SOURCE)) >= 15
    module = load(stubbed, tmp_path)
    with pytest.raises(NotImplementedError, match="1a, the minibatch ELBO estimator"):
        checks.check_all(module)
    with pytest.raises(NotImplementedError, match="2a, the variables of both networks"):
        checks.check_vae(module.VAE)
    broken = load(SOURCE.replace("    return dict(self._variables)\n",
                                 "    return list(self._variables)\n"), tmp_path)
    capsys.readouterr()
    assert not checks.check_vae(broken.VAE)
    assert capsys.readouterr().out.startswith(
        "FAIL  2a: weights() must return a dict of named variables, got list")
    crashing = load(SOURCE.replace("mu, rho = tf.split(out, 2, axis=-1)",
                                   "mu, rho = tf.split(out, 3, axis=-1)"), tmp_path)
    assert not checks.check_vae(crashing.VAE)
    line = capsys.readouterr().out
    assert line.startswith("FAIL  2a: VAE.infer raised InvalidArgumentError") and \
        line.count("\n") == 1


def test_the_solution_agrees_with_the_reference_vae_for_the_same_weights_and_noise(solution):
    vae = solution.VAE(latent_dim=3, hidden_units=64, seed=4)
    rng = np.random.default_rng(0)
    for variable in vae.weights().values():  # away from the start, so every term matters
        variable.assign(variable + rng.normal(0.0, 0.05, variable.shape).astype(np.float32))
    reference = reference_model.from_homework_weights(
        {name: v.numpy() for name, v in vae.weights().items()})
    x = rng.uniform(0.0, 1.0, size=(16, 784)).astype(np.float32)
    eps = rng.normal(size=(16, 3)).astype(np.float32)
    log_lik, kl = (t.numpy() for t in vae.elbo_terms(x, eps))
    q = reference.infer(x)
    z = q.mean() + q.stddev() * eps
    np.testing.assert_allclose(kl, tfd.kl_divergence(q, reference.prior_distribution()).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_lik, reference.generate(z).log_prob(x).numpy(), rtol=1e-5)
    np.testing.assert_allclose(vae.compute_elbo(x, eps).numpy(), log_lik - kl, rtol=1e-6)
    # the reference's own ELBO uses its own noise: equal in expectation, checked by averaging
    ours = np.array([vae.compute_elbo(x).numpy() for _ in range(100)])
    theirs = np.array([reference.compute_elbo(x, seed=s).numpy() for s in range(100)])
    standard_error = np.sqrt((ours.var(axis=0) + theirs.var(axis=0)) / 100)
    assert np.all(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) < 5 * standard_error + 1e-3)


def test_weights_are_saved_as_plain_arrays_and_load_into_a_fresh_model(solution, tmp_path):
    vae = solution.VAE(seed=2)
    path = solution.save_weights(vae, tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(reference_model.homework_weight_shapes())
        assert all(archive[name].dtype == np.float32 for name in archive.files)
    fresh = solution.VAE(seed=9)
    solution.load_weights(fresh, tmp_path)
    for name, variable in fresh.weights().items():
        np.testing.assert_array_equal(variable.numpy(), vae.weights()[name].numpy())
    wrong = solution.VAE(latent_dim=3, hidden_units=16)
    with pytest.raises(ValueError, match="build the VAE with the run's sizes"):
        solution.load_weights(wrong, tmp_path)


def test_training_continues_after_an_interruption(solution, tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(256, 784), dtype=np.uint8)
    vae = solution.VAE(hidden_units=32, seed=1)
    first = solution.train(vae, pixels, epochs=1, run_dir=tmp_path, batch_size=64,
                           progress=False)
    assert [r["epoch"] for r in first] == [1]
    resumed_model = solution.VAE(hidden_units=32, seed=7)  # a fresh kernel's new model
    rows = solution.train(resumed_model, pixels, epochs=2, run_dir=tmp_path, batch_size=64,
                          progress=False)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == first[0]
    assert rows[1]["train_elbo"] > rows[0]["train_elbo"]
    before = {n: v.numpy() for n, v in resumed_model.weights().items()}
    assert solution.train(resumed_model, pixels, epochs=2, run_dir=tmp_path, batch_size=64,
                          progress=False) == rows  # nothing left to train
    fresh = solution.VAE(hidden_units=32, seed=5)
    solution.load_weights(fresh, tmp_path)
    for name, variable in fresh.weights().items():
        np.testing.assert_array_equal(variable.numpy(), before[name])


def test_training_records_the_learned_variance_after_each_epoch(solution, tmp_path):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(320, 784), dtype=np.uint8)
    vae = solution.VAE(hidden_units=32, seed=1)
    rows = solution.train(vae, pixels, epochs=1, run_dir=tmp_path, batch_size=64,
                          progress=False)
    learned = float(solution.likelihood_variance(vae.weights()["likelihood/rho"]))
    assert rows[0]["sigma2"] > 0 and rows[0]["sigma2"] != pytest.approx(0.1, rel=1e-3)
    assert rows[0]["sigma2"] == pytest.approx(learned, rel=1e-6)


def test_training_measures_the_test_elbo_after_each_epoch(solution, tmp_path):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(256, 784), dtype=np.uint8)
    x_test = data.test_set(pixels[:50])
    vae = solution.VAE(hidden_units=32, seed=1)
    rows = solution.train(vae, pixels, epochs=2, run_dir=tmp_path, batch_size=64,
                          test_images=x_test, progress=False)
    assert all(np.isfinite(r["test_elbo"]) for r in rows)
    # the last row's test ELBO is the final model's, within the Monte Carlo noise of z
    again = np.mean([vae.compute_elbo(x_test).numpy().mean() for _ in range(20)])
    assert abs(rows[-1]["test_elbo"] - again) < 5.0


def test_the_test_elbo_check_accepts_the_mean_and_names_a_flipped_sign(solution, capsys):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(3000, 784), dtype=np.uint8)
    x_test = data.test_set(pixels)
    vae = solution.VAE(seed=1)
    right = float(np.mean(vae.compute_elbo(x_test).numpy()))
    first_batch = float(np.mean(vae.compute_elbo(x_test[:500]).numpy()))
    assert checks.check_test_elbo(right, vae, x_test)
    assert not checks.check_test_elbo(-right, vae, x_test)
    assert not checks.check_test_elbo(first_batch + 3.0, vae, x_test)
    assert not checks.check_test_elbo(float("nan"), vae, x_test)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PASS  2b: ")
    assert "the sign is flipped" in lines[1]
    assert lines[2].startswith("FAIL  2b: reported ") and "average compute_elbo" in lines[2]
    assert lines[3] == "FAIL  2b: the test ELBO holds NaN or infinite values"


@pytest.mark.parametrize("old, new, expected", [
    ("return tfd.MultivariateNormalDiag(loc=mu, scale_diag=tf.sqrt(posterior_variance(rho)))",
     "return mu", "FAIL  2a: infer(x) must return a TFP distribution, got EagerTensor"),
    ("return tfd.Independent(tfd.Normal(loc=mean, scale=scale), reinterpreted_batch_ndims=1)",
     "return tfd.Normal(loc=mean[..., :10], scale=scale[..., :10])",
     "FAIL  2a: generate(z).mean() has shape [3, 8, 10], expected [3, 8, 784]"),
    ("        return log_likelihood - kl\n", "        return tf.reduce_mean(log_likelihood - kl)\n",
     "FAIL  2a: compute_elbo(x, eps) has shape [], expected [8]"),
])
def test_a_class_of_the_wrong_type_or_shape_fails_with_what_was_expected(old, new, expected,
                                                                        tmp_path, capsys):
    assert SOURCE.count(old) == 1, old
    module = load(SOURCE.replace(old, new), tmp_path)
    assert not checks.check_vae(module.VAE)
    printed = capsys.readouterr().out
    assert printed.startswith(expected) and printed.count("\n") == 1, printed


def test_a_reparameterized_sample_outside_tensorflow_is_one_fail_line(tmp_path, capsys):
    module = load(SOURCE.replace("    return mu + tf.sqrt(variance) * eps\n",
                                 "    return np.asarray(mu + tf.sqrt(variance) * eps)\n"),
                  tmp_path)
    assert not checks.check_reparameterization(module.reparameterize,
                                               module.reparameterization_gradient)
    printed = capsys.readouterr().out
    assert printed == ("FAIL  1d: reparameterize returned a ndarray: return a TensorFlow "
                       "tensor computed from mu and variance, so that gradients flow\n")
