"""Visible checks of the homework's model (2a) and training step (2b), against the
package's reference ``VAE`` loaded with the student's own weights."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from vae_helpers.course.checking import Failed, as_array, call, close, images, run


# ------------------------------------------------------------------------------- 2a
def _weights(vae, latent_dim: int, hidden_units: int) -> dict:
    """``vae.weights()``, checked against ``homework_weight_shapes(latent_dim, hidden_units)``."""
    from vae_helpers.model import sizes_of_weights

    weights = call(vae.weights)
    if not isinstance(weights, dict):
        raise Failed(f"weights() must return a dict of named variables, got "
                     f"{type(weights).__name__}")
    try:
        sizes = sizes_of_weights(weights)
    except ValueError as err:
        raise Failed(f"weights(): {err}") from None
    if sizes != (latent_dim, hidden_units, 784):
        raise Failed(f"weights() are those of a network with P = {sizes[0]}, H = {sizes[1]} "
                     f"and D = {sizes[2]}, expected P = {latent_dim}, H = {hidden_units} "
                     "and D = 784")
    return weights


def _reference_terms(reference, x, eps):
    """The reference VAE's ``(log p(x|z), KL(q(z|x) || p(z)))`` at ``z`` from the noise ``eps``."""
    from vae_helpers.backend import tfd
    from vae_helpers.distributions import sample_from_noise

    q = reference.infer(x)
    log_lik = reference.generate(sample_from_noise(q, eps)).log_prob(x)
    return log_lik, tfd.kl_divergence(q, reference.prior_distribution())


def _distribution(value, what: str, mean_shape):
    from vae_helpers.backend import tfd

    if not isinstance(value, tfd.Distribution):
        raise Failed(f"{what} must return a TFP distribution, got {type(value).__name__}")
    mean = as_array(call(value.mean), f"{what}.mean()", mean_shape)
    variance = np.asarray(call(value.variance), np.float64)
    if variance.shape != tuple(mean_shape):
        raise Failed(f"{what}.variance() has shape {list(variance.shape)}, expected "
                      f"{list(mean_shape)}: one variance per coordinate (event shape "
                      f"[{mean_shape[-1]}])")
    return mean, variance


def check_vae(vae_class: type, latent_dim: int = 2, hidden_units: int = 512) -> bool:
    """2a: the VAE class's structure, start, variances and ELBO against the reference VAE
    loaded with the class's own weights."""
    def body():
        from vae_helpers import model as reference_model
        from vae_helpers.backend import tf, tfd

        if any(c.__module__.startswith("vae_helpers") for c in inspect.getmro(vae_class)):
            raise Failed("the VAE class comes from (or builds on) vae_helpers: write it "
                          "yourself with TensorFlow and TFP")
        vae = call(vae_class, latent_dim=latent_dim, hidden_units=hidden_units, seed=0)
        weights = _weights(vae, latent_dim, hidden_units)
        trainable = {id(v) for v in vae.trainable_variables}
        if {id(v) for v in weights.values()} != trainable:
            raise Failed("weights() and vae.trainable_variables must hold the same variables "
                          "(every trained number saved, nothing saved that is not trained)")
        for name, variable in weights.items():
            value = variable.numpy()
            if variable.dtype != tf.float32:
                raise Failed(f"{name} is {variable.dtype.name}; use float32")
            if name.endswith("kernel"):
                std = float(value.std())
                if abs(std - 0.01) > 0.15 * 0.01 or abs(float(value.mean())) > 0.003:
                    raise Failed(f"{name} starts with mean {value.mean():.4f} and standard "
                                  f"deviation {std:.4f}; the homework's N(0, 0.01) is a "
                                  "standard deviation of 0.01 around 0")
            elif name.endswith("bias") and np.any(value != 0):
                raise Failed(f"{name} does not start at zero")
        rng = np.random.default_rng(105)
        x = images(rng, 8)
        eps = rng.normal(size=(8, latent_dim)).astype(np.float32)
        q = call(vae.infer, x)
        q_mean, q_variance = _distribution(q, "infer(x)", (8, latent_dim))
        if q.reparameterization_type != tfd.FULLY_REPARAMETERIZED:
            raise Failed("infer(x) must be a reparameterized distribution")
        z = rng.normal(size=(3, 8, latent_dim)).astype(np.float32)
        p = call(vae.generate, z)
        p_mean, p_variance = _distribution(p, "generate(z)", (3, 8, 784))
        if p_mean.min() < 0 or p_mean.max() > 1:
            raise Failed("generate(z).mean() leaves [0, 1]: the decoder's mean is a sigmoid")
        # the variances stay non-negative whatever the networks output
        saved = {name: v.numpy() for name, v in weights.items()}
        try:
            bias = saved["encoder/output/bias"].copy()
            bias[latent_dim:] = -30.0
            weights["encoder/output/bias"].assign(bias)
            weights["likelihood/rho"].assign(-30.0)
            q_var = np.asarray(call(call(vae.infer, x).variance))
            p_var = np.asarray(call(call(vae.generate, z).variance))
        finally:
            for name, variable in weights.items():
                variable.assign(saved[name])
        if not (np.all(q_var >= 0) and np.all(p_var > 0)):
            raise Failed("the variances go negative (or NaN) when the networks output "
                          "-30: make them non-negative with posterior_variance(rho) and "
                          "likelihood_variance(rho)")
        # the reference VAE with the same weights
        reference = reference_model.from_homework_weights(saved)
        q_ref = reference.infer(x)
        if not (close(q_mean, q_ref.mean().numpy(), 1e-4, 1e-6)
                and close(q_variance, q_ref.variance().numpy(), 1e-4, 1e-9)):
            raise Failed("q(z|x) differs from the reference with your weights: the encoder's "
                          "first P outputs are the means, the last P the rho of "
                          "posterior_variance(rho)")
        p_ref = reference.generate(z)
        if not (close(p_mean, p_ref.mean().numpy(), 1e-4, 1e-6)
                and close(p_variance, p_ref.variance().numpy(), 1e-4, 1e-9)):
            raise Failed("p(x|z) differs from the reference with your weights: mean "
                          "sigmoid(decoder), variance likelihood_variance(rho)")
        ref_variables = reference_model.homework_variables(reference)
        with tf.GradientTape() as tape:
            log_lik_ref, kl_ref = _reference_terms(reference, x, eps)
            total_ref = tf.reduce_sum(log_lik_ref - kl_ref)
        by_ref = dict(zip(ref_variables, tape.gradient(total_ref, list(ref_variables.values())),
                          strict=True))
        log_lik_ref, kl_ref = log_lik_ref.numpy(), kl_ref.numpy()
        terms = call(vae.elbo_terms, x, eps)
        if not isinstance(terms, (tuple, list)) or len(terms) != 2:
            raise Failed("elbo_terms must return the pair (log_likelihood, kl)")
        log_lik = as_array(terms[0], "elbo_terms' log-likelihood", (8,))
        kl = as_array(terms[1], "elbo_terms' KL", (8,))
        if not close(kl, kl_ref, 1e-4, 1e-4):
            raise Failed("the KL term differs from TFP's KL(q(z|x) || N(0, I))")
        if not close(log_lik, log_lik_ref, 1e-4, 1e-2):
            raise Failed("log p(x|z) at z = μ + σ ε differs from the reference's for the "
                          "same ε")
        elbo = as_array(call(vae.compute_elbo, x, eps), "compute_elbo(x, eps)", (8,))
        if not close(elbo, log_lik_ref - kl_ref, 1e-4, 1e-2):
            raise Failed("compute_elbo(x, eps) is not log p(x|z) - KL for the same ε")
        names = list(weights)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(vae.compute_elbo(x, eps))
        for name, grad in zip(names, tape.gradient(total, [weights[n] for n in names]),
                              strict=True):
            expected = by_ref[name].numpy()
            if grad is None or not close(grad.numpy(), expected, 2e-3,
                                         2e-3 * float(np.abs(expected).max()) + 1e-6):
                raise Failed(f"the ELBO's gradient with respect to {name} differs from the "
                             "reference's: does z = μ + σ ε carry gradients (no "
                             "tf.stop_gradient)?")
        draws = [as_array(call(vae.compute_elbo, x), "compute_elbo(x)", (8,)) for _ in range(2)]
        if np.array_equal(*draws):
            raise Failed("compute_elbo(x) without eps gave the same values twice: draw new "
                          "noise on each call")
        return (f"{latent_dim}-{hidden_units} networks, N(0, 0.01²) weights, zero biases, "
                "non-negative variances; infer, generate and the ELBO and its gradients "
                "match the reference VAE holding your weights")
    return run("2a", body)


# ------------------------------------------------------------------------------- 2b
def check_train_step(make_train_step: Callable, vae_class: type, steps: int = 30) -> bool:
    """2b: a compiled step that raises the ELBO (measured by the reference VAE)."""
    def body():
        from vae_helpers import model as reference_model
        from vae_helpers.backend import tf

        rng = np.random.default_rng(106)
        x = images(rng, 128)
        eps = rng.normal(size=(16, 128, 2)).astype(np.float32)

        def elbo_now(vae):
            reference = reference_model.from_homework_weights(
                {n: v.numpy() for n, v in call(vae.weights).items()})
            log_lik, kl = _reference_terms(reference, x, eps)
            return float(tf.reduce_mean(log_lik) - tf.reduce_mean(kl))

        vae = call(vae_class, seed=1)
        step = call(make_train_step, vae, tf.keras.optimizers.Adam(1e-3))
        if not isinstance(step, tf.types.experimental.PolymorphicFunction):
            raise Failed("make_train_step must return a tf.function (compiled), got "
                          f"{type(step).__name__}")
        before = elbo_now(vae)
        for _ in range(steps):
            value = call(step, tf.constant(x))
        value = float(as_array(value, "the step's return value", ()))
        after = elbo_now(vae)
        if not after > before + 1.0:
            raise Failed(f"{steps} steps took the ELBO from {before:.1f} to {after:.1f} nats: "
                          "the step must ascend the ELBO (minimise −ELBO) with the optimizer")
        if abs(value - after) > 0.1 * abs(after) + 50.0:
            raise Failed(f"the step returned {value:.1f}, far from the batch's mean ELBO "
                          f"({after:.1f})")
        return f"a compiled step; {steps} Adam steps raise a batch's ELBO"
    return run("2b", body)


def check_test_elbo(test_elbo, vae, x_test, samples: int = 4, n_se: float = 5.0) -> bool:
    """2b: the test ELBO reported for ``x_test``, against the reference VAE holding
    ``vae``'s weights: within ``n_se`` standard errors of its Monte Carlo estimate on the
    same images (``samples`` draws of z each; the report's one draw per image counted)."""
    def body():
        from vae_helpers import model as reference_model
        from vae_helpers.backend import tf

        value = float(as_array(test_elbo, "the test ELBO", ()))
        x = tf.convert_to_tensor(x_test, tf.float32)
        reference = reference_model.from_homework_weights(
            {n: v.numpy() for n, v in call(vae.weights).items()})
        draws = []
        for i in range(0, int(x.shape[0]), 2000):
            batch = x[i:i + 2000]
            eps = tf.random.stateless_normal([samples, int(batch.shape[0]),
                                              reference.latent_dim], seed=[107, i])
            log_lik, kl = _reference_terms(reference, batch, eps)
            draws.append((log_lik - kl).numpy())
        per_image = np.concatenate(draws, axis=1).astype(np.float64)   # [samples, N]
        mean, n = float(per_image.mean()), per_image.shape[1]
        # the same images on both sides: only the noise of z differs, an image's variance
        # over its draws; the report has one draw per image, this estimate `samples`
        noise = float(per_image.var(axis=0, ddof=1).mean())
        se = float(np.sqrt(noise * (1.0 / n + 1.0 / (n * samples))))
        if value * mean < 0 and abs(value + mean) <= n_se * se:
            raise Failed(f"reported {value:.2f} nats; the reference VAE with your weights "
                         f"gives {mean:.2f}: the sign is flipped (the ELBO, not the loss −ELBO)")
        if abs(value - mean) > n_se * se:
            raise Failed(f"reported {value:.2f} nats; the reference VAE with your weights "
                         f"gives {mean:.2f} ± {se:.2f}: average compute_elbo over every test "
                         "image")
        return (f"{value:.2f} nats per image; the reference VAE with your weights gives "
                f"{mean:.2f} (within {n_se:g} standard errors)")
    return run("2b", body)
