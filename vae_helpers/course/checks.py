r"""Visible checks: the homework's tasks tested while the student works.

Each ``check_*`` function runs the student's function or class on fixed inputs,
compares it with an independent reference (a closed form evaluated by TFP, TFP's
automatic differentiation, or the package's reference ``VAE`` loaded with the
student's own weights), prints one line,

``PASS  1c: ...`` or ``FAIL  1c: <what is wrong, and where to look>``,

and returns the verdict. The references are TFP's distributions and the library;
no check contains or prints the code it expects. A stub the student has not
written yet raises ``NotImplementedError`` naming its task, and that error goes
through, so a handout stops at its first unwritten task. Any other error in the
student's code becomes a ``FAIL`` line that names it, never a traceback from
inside the package.

The student kit (``KIT``) is what a handout and the student's module may import
from the package; ``check_kit`` fails a module that imports anything else, such as
the reference ``vae_helpers.model``, also through ``importlib.import_module`` or
``__import__`` with a constant name (``kit_violations``, on ``imported_modules``: the
one import scanner, which the grader's ``static.no_premade_vae`` check uses too).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from vae_helpers.course.checking import Failed, as_array, call, close, run
from vae_helpers.course.model_checks import check_test_elbo, check_train_step, check_vae

__all__ = ["KIT", "notebook_python", "imported_modules", "kit_violations", "check_kit",
           "check_minibatch_elbo", "check_gaussian_grads", "check_gaussian_kl",
           "check_reparameterization", "check_vae",
           "check_train_step", "check_test_elbo", "check_laplace", "check_all"]

KIT = (
    "vae_helpers.data",
    "vae_helpers.plots",
    "vae_helpers.progress",
    "vae_helpers.seeding",
    "vae_helpers.course.record",
    "vae_helpers.course.notebook",
    "vae_helpers.course.checks",
)
"""The modules of the package a handout and a student module may import."""

KIT_NAMES = ("vae_helpers.set_seed",)
"""Names the package's top level re-exports from the kit (``from vae_helpers import set_seed``)."""

_KIT_PACKAGES = ("vae_helpers", "vae_helpers.course")  # importable for their kit members only


# ------------------------------------------------------------------------------- the kit
def notebook_python(path) -> str:
    """The Python of a notebook's code cells, IPython's ``%`` and ``!`` lines left out
    (what ``kit_violations`` and other import scans read)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "\n".join(line for cell in nb.cells if cell.cell_type == "code"
                     for line in cell.source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))


def imported_modules(source: str) -> list[tuple[str, int]]:
    """Every module ``source`` imports, with the line of the import, in order.

    Read from the syntax tree, nothing executed: ``import a.b``, ``from a.b import c``
    (``a.b.c`` when ``a.b`` is ``vae_helpers`` or ``vae_helpers.course``, whose members
    are modules), and the dynamic imports ``importlib.import_module("a.b")`` (also
    relative to a constant package) and ``__import__("a.b", fromlist=[...])`` with
    constant strings. Relative imports (``from . import x``) are left out.

    Raises:
        SyntaxError: ``source`` is not Python.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = _members(node.module, [alias.name for alias in node.names])
        elif isinstance(node, ast.Call):
            names = _dynamic_import(node)
        else:
            continue
        found += [(name, node.lineno) for name in names]
    return sorted(found, key=lambda item: item[1])


def _members(module: str, members: list[str]) -> list[str]:
    if module in _KIT_PACKAGES:
        return [f"{module}.{member}" for member in members]
    return [module]


def _constant(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dynamic_import(call: ast.Call) -> list[str]:
    """The module a call of ``importlib.import_module`` or ``__import__`` imports, when its
    name is a constant string."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in ("import_module", "__import__") or not call.args:
        return []
    name = _constant(call.args[0])
    if name is None:
        return []
    if called == "import_module":
        package = _constant(call.args[1]) if len(call.args) > 1 else next(
            (_constant(k.value) for k in call.keywords if k.arg == "package"), None)
        if name.startswith("."):
            if not package:
                return []
            name = package + name if name.strip(".") else package
        return [name]
    fromlist = call.args[3] if len(call.args) > 3 else next(
        (k.value for k in call.keywords if k.arg == "fromlist"), None)
    members = [_constant(e) for e in getattr(fromlist, "elts", [])]
    members = [m for m in members if m]
    return _members(name, members) if members else [name]


def kit_violations(source: str, lines: bool = False) -> list:
    """The package modules that ``source`` imports outside the kit, in order (also through
    ``importlib.import_module`` or ``__import__`` with a constant name).

    With ``lines``, every such import as a pair ``(module, line)``; without, each module
    once.

    Raises:
        SyntaxError: ``source`` is not Python.
    """
    found = [(name, line) for name, line in imported_modules(source)
             if (name == "vae_helpers" or name.startswith("vae_helpers."))
             and name not in KIT + KIT_NAMES]
    return found if lines else list(dict.fromkeys(name for name, _ in found))


def check_kit(module: ModuleType) -> bool:
    """The student's module imports from the package only what the kit holds."""
    def body():
        try:
            source = Path(inspect.getsourcefile(module)).read_text(encoding="utf-8")
        except (TypeError, OSError) as err:
            raise Failed(f"cannot read the source of {module.__name__} ({err})") from None
        bad = kit_violations(source)
        bad += [f"{value.__module__}.{name}" for name, value in vars(module).items()
                if inspect.isclass(value) or inspect.isfunction(value)
                if getattr(value, "__module__", "").startswith("vae_helpers.")
                and value.__module__ not in KIT and not name.startswith("_")]
        if bad:
            raise Failed(f"{module.__name__} uses {', '.join(dict.fromkeys(bad))}, outside "
                          "the student kit: write the model, its training and its math "
                          "yourself (the kit: " + ", ".join(KIT) + ")")
        return f"{module.__name__} imports from vae_helpers only the student kit"
    return run("kit", body)


# ------------------------------------------------------------------------------- 1a
def check_minibatch_elbo(minibatch_elbo: Callable) -> bool:
    """1a: averaged over the minibatches of a partition, the estimate is the full-data ELBO."""
    def body():
        rng = np.random.default_rng(101)
        n, batch, samples = 24, 4, 3
        log_likelihood = rng.normal(-50.0, 5.0, size=(samples, n))
        kl = rng.gamma(2.0, 1.5, size=n)
        full = float(np.sum(log_likelihood.mean(axis=0) - kl))
        order = rng.permutation(n)
        estimates = [float(as_array(call(minibatch_elbo, log_likelihood[:, idx], kl[idx], n),
                                  "minibatch_elbo's value", ()))
                     for idx in order.reshape(-1, batch)]
        mean = float(np.mean(estimates))
        if not close(mean, full, 1e-9, 1e-9):
            ratio = mean / full
            hints = [(batch / n, "the sum over the minibatch is not scaled by N/|B| "
                                 f"(= {n // batch} here)"),
                     (1.0 / n, "that is the minibatch's mean ELBO; the estimator of the "
                               "whole training set's ELBO scales the minibatch sum by N/|B|")]
            hint = next((h for r, h in hints if abs(ratio - r) < 1e-6 * abs(r)),
                        "its average over the minibatches of a partition of the data is "
                        f"{mean:.6g}, not the full-data ELBO {full:.6g}")
            raise Failed(hint)
        return ("averaged over the 6 minibatches of a partition, it is the full-data ELBO "
                "(unbiased, with the N/|B| scale)")
    return run("1a", body)


# ------------------------------------------------------------------------------- 1b
def check_gaussian_grads(gaussian_log_likelihood_grads: Callable) -> bool:
    """1b: d/df and d/dsigma^2 of log N(x; f, sigma^2 I) against TFP's autodiff."""
    def body():
        from vae_helpers.backend import tf, tfd

        rng = np.random.default_rng(102)
        x, f = rng.uniform(size=(3, 784)), rng.uniform(0.05, 0.95, size=(3, 784))
        variance = 0.05
        mean_t, var_t = tf.constant(f), tf.constant(variance, tf.float64)
        scale_t = tf.constant(np.sqrt(variance), tf.float64)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([mean_t, var_t, scale_t])
            by_var = tf.reduce_sum(tfd.Normal(mean_t, tf.sqrt(var_t)).log_prob(x), axis=-1)
            by_scale = tf.reduce_sum(tfd.Normal(mean_t, scale_t).log_prob(x), axis=-1)
        ref_mean = tape.gradient(by_var, mean_t).numpy()
        ref_var = tape.jacobian(by_var, var_t).numpy()
        ref_scale = tape.jacobian(by_scale, scale_t).numpy()
        result = call(gaussian_log_likelihood_grads, x, f, variance)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise Failed("return the pair (grad_mean, grad_variance)")
        grad_mean = as_array(result[0], "grad_mean", (3, 784))
        grad_var = as_array(result[1], "grad_variance", (3,))
        if not close(grad_mean, ref_mean, 1e-6, 1e-9):
            raise Failed("grad_mean (∂/∂f) differs from autodiff of TFP's Normal log_prob")
        if not close(grad_var, ref_var, 1e-6, 1e-9):
            if close(grad_var, ref_scale, 1e-6, 1e-9):
                raise Failed("grad_variance is the derivative with respect to σ; the task "
                              "asks for ∂/∂σ² (the chain rule gives a factor 1/(2σ))")
            raise Failed("grad_variance (∂/∂σ²) differs from autodiff of TFP's Normal "
                          "log_prob")
        # the weights' gradient: ∂f/∂w times grad_mean, for a sigmoid output layer
        h = rng.normal(size=(3, 5))
        w = tf.Variable(rng.normal(0.0, 0.3, size=(5, 784)))
        with tf.GradientTape() as tape:
            out = tf.sigmoid(h @ w)
            log_lik = tf.reduce_sum(tfd.Normal(out, np.sqrt(variance)).log_prob(x))
        chain = as_array(call(gaussian_log_likelihood_grads, x, out.numpy(), variance)[0],
                       "grad_mean", (3, 784))
        by_chain = h.T @ (chain * out.numpy() * (1.0 - out.numpy()))
        if not close(by_chain, tape.gradient(log_lik, w).numpy(), 1e-6, 1e-9):
            raise Failed("∂/∂w through a sigmoid layer from grad_mean differs from autodiff")
        return "∂/∂f, ∂/∂σ² and, by the chain rule, ∂/∂w match TFP's autodiff"
    return run("1b", body)


# ------------------------------------------------------------------------------- 1c
def _random_covariance(rng, k):
    a = rng.normal(size=(k, k))
    return a @ a.T + k * np.eye(k) * 0.3


def check_gaussian_kl(gaussian_kl: Callable, standard_normal_kl: Callable) -> bool:
    """1c: the general Gaussian KL and the VAE's diagonal one against TFP's closed forms."""
    def body():
        from vae_helpers.backend import tf, tfd

        rng = np.random.default_rng(103)
        k = 4
        for pair in range(5):
            mu0, mu1 = rng.normal(size=k), rng.normal(size=k)
            cov0, cov1 = _random_covariance(rng, k), _random_covariance(rng, k)
            p0 = tfd.MultivariateNormalTriL(mu0, np.linalg.cholesky(cov0))
            p1 = tfd.MultivariateNormalTriL(mu1, np.linalg.cholesky(cov1))
            reference = float(tfd.kl_divergence(p0, p1).numpy())
            value = float(as_array(call(gaussian_kl, mu0, cov0, mu1, cov1), "gaussian_kl", ()))
            if not close(value, reference, 1e-8, 1e-10):
                trace = np.trace(np.linalg.solve(cov1, cov0))
                if abs(value - (reference + 0.5 * trace)) < 1e-6 * abs(reference + trace):
                    raise Failed("gaussian_kl is off by ½ tr(Σ₁⁻¹Σ₀): the trace term is "
                                  "missing its factor ½")
                if abs(value - float(tfd.kl_divergence(p1, p0).numpy())) < 1e-6:
                    raise Failed("gaussian_kl gives KL(p₁ || p₀): the arguments are swapped")
                if abs(value - 2 * reference) < 1e-6 * abs(reference):
                    raise Failed("gaussian_kl is twice the KL: the overall ½ is missing")
                raise Failed(f"gaussian_kl differs from TFP's kl_divergence on pair {pair} "
                              f"({value:.6g} against {reference:.6g})")
        mu = rng.normal(size=(3, 2)).astype(np.float32)
        variance = rng.uniform(0.1, 2.0, size=(3, 2)).astype(np.float32)
        q = tfd.MultivariateNormalDiag(mu, np.sqrt(variance))
        reference = tfd.kl_divergence(q, tfd.MultivariateNormalDiag(tf.zeros(2))).numpy()
        value = as_array(call(standard_normal_kl, tf.constant(mu), tf.constant(variance)),
                       "standard_normal_kl", (3,))
        if not close(value, reference, 1e-5, 1e-6):
            if close(value, reference + 0.5 * variance.sum(-1), 1e-5, 1e-6):
                raise Failed("standard_normal_kl is off by ½ Σ σ²: the trace term is "
                              "missing its factor ½")
            raise Failed("standard_normal_kl differs from TFP's kl_divergence "
                          "(one KL per row, summed over the P coordinates)")
        return ("gaussian_kl on 5 full-covariance pairs (k = 4) and standard_normal_kl "
                "match TFP's kl_divergence")
    return run("1c", body)


# ------------------------------------------------------------------------------- 1d
def _reference_z(mu, variance, eps):
    """N(mu, diag variance) at the noise ``eps``, through TFP's Normal quantile (float64)."""
    from vae_helpers.backend import tf, tfd

    standard = tfd.Normal(np.float64(0.0), np.float64(1.0))
    return tfd.Normal(mu, tf.sqrt(variance)).quantile(standard.cdf(eps))


def check_reparameterization(reparameterize: Callable,
                             reparameterization_gradient: Callable) -> bool:
    """1d: z = mu + sigma * eps carries gradients, and the gradient estimate is TFP's autodiff."""
    def body():
        from vae_helpers.backend import tf

        rng = np.random.default_rng(104)
        eps = rng.normal(size=(6, 2))
        mu = tf.Variable([0.4, -1.2], dtype=tf.float64)
        variance = tf.Variable([0.5, 2.0], dtype=tf.float64)
        with tf.GradientTape(persistent=True) as tape:
            z = call(reparameterize, mu, variance, eps)
            reference = _reference_z(mu, variance, eps)
            total_ref = tf.reduce_sum(reference * [1.0, 3.0])
            total_z3 = tf.reduce_sum(z * [1.0, 3.0]) if tf.is_tensor(z) else None
        if not close(as_array(z, "reparameterize's z", (6, 2)), reference.numpy(), 1e-9, 1e-9):
            raise Failed("reparameterize's z is not μ + σ ε for the ε given")
        if total_z3 is None:
            raise Failed(f"reparameterize returned a {type(z).__name__}: return a TensorFlow "
                         "tensor computed from mu and variance, so that gradients flow")
        grads = tape.gradient(total_z3, [mu, variance])
        if any(g is None for g in grads) or not np.any(grads[0].numpy()):
            raise Failed("no gradient flows from z back to μ and σ²: compute z from them "
                          "without tf.stop_gradient (and without a sampler that is not "
                          "reparameterized)")
        expected = tape.gradient(total_ref, [mu, variance])
        if not all(close(g.numpy(), e.numpy(), 1e-8, 1e-10)
                   for g, e in zip(grads, expected, strict=True)):
            raise Failed("z's gradients with respect to μ and σ² differ from autodiff "
                          "of TFP's Normal quantile")
        a, b = np.array([1.5, -0.5]), np.array([0.3, 2.0])
        eps = rng.normal(size=(4000, 2))
        mu0, var0 = tf.constant([0.4, -1.2], tf.float64), tf.constant([0.5, 2.0], tf.float64)

        def fn(zz):
            return tf.reduce_sum(a * zz**2 + b * zz, axis=-1)

        result = call(reparameterization_gradient, fn, mu0, var0, eps)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise Failed("reparameterization_gradient must return (grad_mu, grad_variance)")
        if any(g is None for g in result):
            raise Failed("reparameterization_gradient returned None: no gradient flows "
                          "through z (tf.stop_gradient, or z computed outside the tape?)")
        got = [as_array(g, name, (2,)) for g, name in zip(result, ("grad_mu", "grad_variance"),
                                                       strict=True)]
        with tf.GradientTape() as tape:
            tape.watch([mu0, var0])
            objective = tf.reduce_mean(fn(_reference_z(mu0, var0, eps)))
        expected = [g.numpy() for g in tape.gradient(objective, [mu0, var0])]
        if not all(close(g, e, 1e-7, 1e-9) for g, e in zip(got, expected, strict=True)):
            raise Failed("the gradient estimate differs from the average over the samples "
                          "of autodiff through z = μ + σ ε")
        return ("z = μ + σ ε carries gradients to μ and σ², and the estimate matches "
                "autodiff through TFP's Normal")
    return run("1d", body)


# ------------------------------------------------------------------------------- 4a
def check_laplace(laplace_sample: Callable, laplace_sample_grads: Callable,
                  laplace_kl: Callable) -> bool:
    """4a: the inverse-CDF sampler, its pathwise gradient and the Laplace KL against TFP."""
    def body():
        from vae_helpers.backend import tf, tfd

        u = np.linspace(0.0005, 0.9995, 999)
        mu, b = 0.7, 0.4
        loc, scale = tf.constant(mu, tf.float64), tf.constant(b, tf.float64)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([loc, scale])
            quantile = tfd.Laplace(loc, scale).quantile(u)
        z = as_array(call(laplace_sample, mu, b, u), "laplace_sample", u.shape)
        if not close(z, quantile.numpy(), 1e-9, 1e-12):
            if close(z, tfd.Laplace(loc, scale).quantile(1.0 - u).numpy(), 1e-9, 1e-12):
                raise Failed("laplace_sample decreases in u: the inverse CDF is increasing "
                              "(check the sign)")
            raise Failed("laplace_sample is not TFP's Laplace quantile (inverse CDF) of u")
        result = call(laplace_sample_grads, mu, b, u)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise Failed("laplace_sample_grads must return (dz/dμ, dz/db)")
        d_mu = as_array(result[0], "dz/dμ", u.shape)
        d_b = as_array(result[1], "dz/db", u.shape)
        jac = tape.jacobian(quantile, [loc, scale])
        if not (close(d_mu, jac[0].numpy(), 1e-9, 1e-12)
                and close(d_b, jac[1].numpy(), 1e-9, 1e-12)):
            raise Failed("the pathwise derivatives differ from autodiff of TFP's Laplace "
                          "quantile")
        rng = np.random.default_rng(107)
        m1, m2 = rng.normal(size=20), rng.normal(size=20)
        b1, b2 = rng.uniform(0.2, 3.0, size=20), rng.uniform(0.2, 3.0, size=20)
        reference = tfd.kl_divergence(tfd.Laplace(m1, b1), tfd.Laplace(m2, b2)).numpy()
        value = as_array(call(laplace_kl, m1, b1, m2, b2), "laplace_kl", (20,))
        if not close(value, reference, 1e-9, 1e-12):
            raise Failed("laplace_kl differs from TFP's KL(Laplace || Laplace)")
        return ("the inverse-CDF sampler, its pathwise gradient and the KL match TFP's "
                "Laplace")
    return run("4a", body)


# ------------------------------------------------------------------------------- all
def check_all(module: ModuleType, through: str = "4a", stop: bool = False) -> bool:
    """Every check in the homework's order, up to and including task ``through``.

    Each runs even when an earlier one failed, unless ``stop`` is true: then the
    first failure ends the run. Returns whether all that ran passed.
    """
    order = {
        "kit": lambda: check_kit(module),
        "1a": lambda: check_minibatch_elbo(module.minibatch_elbo),
        "1b": lambda: check_gaussian_grads(module.gaussian_log_likelihood_grads),
        "1c": lambda: check_gaussian_kl(module.gaussian_kl, module.standard_normal_kl),
        "1d": lambda: check_reparameterization(module.reparameterize,
                                               module.reparameterization_gradient),
        "2a": lambda: check_vae(module.VAE),
        "2b": lambda: check_train_step(module.make_train_step, module.VAE),
        "4a": lambda: check_laplace(module.laplace_sample, module.laplace_sample_grads,
                                    module.laplace_kl),
    }
    if through not in order:
        raise ValueError(f"through must be one of {', '.join(order)}, got {through!r}")
    passed = True
    for task, task_check in order.items():
        passed = task_check() and passed
        if task == through or (stop and not passed):
            break
    return passed
