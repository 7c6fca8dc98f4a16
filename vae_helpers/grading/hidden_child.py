"""The sandboxed side of the hidden tests: the student module run on the grader's inputs.

``python -I -m vae_helpers.grading.hidden_child FOLDER`` (started by
``vae_helpers.grading.hidden``, inside the sandbox) reads ``FOLDER/inputs.json`` and
``FOLDER/inputs.npz`` (plain arrays), imports ``FOLDER/vae_homework.py`` (the module as
handed in; the working copy, the current directory, is on the path after it), calls
each task's functions and class on the inputs, and writes for each task
``FOLDER/outputs/TASK.json`` (``{"error": null}``, or the one-line error and whether
it was a stub not written) and, when the task ran, ``FOLDER/outputs/TASK.npz``
(float64 arrays by name). Every call is guarded: an exception becomes that task's
error and the next task runs.

Nothing here is trusted by the grader: it knows neither the seed nor the expected
values, and reads what this process wrote as untrusted input.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

FILE_BYTES = 256 * 2**20
"""The largest file this process (and the student's code in it) may write."""


class TaskError(Exception):
    """A task that cannot be completed; the message is its one-line reason."""

    def __init__(self, message: str, not_written: bool = False):
        super().__init__(message)
        self.not_written = not_written


def _line(err: BaseException) -> str:
    text = next((t for t in str(err).splitlines() if t.strip()), "").strip()
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def call(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; whatever it raises becomes a ``TaskError`` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise TaskError(f"{what} raises {_line(err)}", not_written=True) from None
    except BaseException as err:  # noqa: BLE001 - the student's code may raise anything
        if isinstance(err, KeyboardInterrupt):
            raise
        raise TaskError(f"{what} raised {_line(err)}") from None


def number(value, what: str) -> np.ndarray:
    """``value`` (a tensor, array or number) as a float64 array, or a ``TaskError``."""
    try:
        value = value.numpy() if hasattr(value, "numpy") else value
        array = np.asarray(value, dtype=np.float64)
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, KeyboardInterrupt):
            raise
        raise TaskError(f"{what} is not numeric ({type(value).__name__})") from None
    return array


def pair(value, what: str, names: tuple[str, str]):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TaskError(f"{what} must return the pair ({', '.join(names)}), got "
                        f"{type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ the tasks
def task_1a(module, plan, a):
    out = {}
    for i, n_total in enumerate(plan["n_total"]):
        value = call("minibatch_elbo", module.minibatch_elbo, a[f"ll.{i}"], a[f"kl.{i}"],
                     int(n_total))
        out[f"value.{i}"] = number(value, "minibatch_elbo's value")
    return out


def task_1b(module, plan, a):
    out = {}
    for i in range(plan["cases"]):
        result = pair(call("gaussian_log_likelihood_grads", module.gaussian_log_likelihood_grads,
                           a[f"x.{i}"], a[f"mean.{i}"], float(a[f"variance.{i}"])),
                      "gaussian_log_likelihood_grads", ("grad_mean", "grad_variance"))
        out[f"grad_mean.{i}"] = number(result[0], "grad_mean")
        out[f"grad_variance.{i}"] = number(result[1], "grad_variance")
    return out


def task_1c(module, plan, a):
    from vae_helpers.backend import tf

    out = {}
    for i in range(plan["pairs"]):
        value = call("gaussian_kl", module.gaussian_kl, a[f"mu0.{i}"], a[f"cov0.{i}"],
                     a[f"mu1.{i}"], a[f"cov1.{i}"])
        out[f"kl.{i}"] = number(value, "gaussian_kl's value")
    value = call("standard_normal_kl", module.standard_normal_kl, tf.constant(a["mu"]),
                 tf.constant(a["variance"]))
    out["standard"] = number(value, "standard_normal_kl's value")
    return out


def task_1d(module, plan, a):
    from vae_helpers.backend import tf

    mu, variance = tf.Variable(a["mu"]), tf.Variable(a["variance"])
    with tf.GradientTape() as tape:
        z = call("reparameterize", module.reparameterize, mu, variance, a["eps"])
        if not tf.is_tensor(z):
            raise TaskError(f"reparameterize returned a {type(z).__name__}: return a "
                            "TensorFlow tensor computed from mu and variance")
        total = call("reparameterize", lambda: tf.reduce_sum(a["weights"] * z))
    out = {"z": number(z, "reparameterize's z")}
    grads = call("reparameterize", tape.gradient, total, [mu, variance])
    if any(g is None for g in grads):
        raise TaskError("reparameterize: no gradient flows from z back to mu and variance")
    out["z_grad_mu"], out["z_grad_variance"] = (number(g, "a gradient of z") for g in grads)
    coefficients = [tf.constant(a[k]) for k in ("fn_a", "fn_b", "fn_c")]

    def fn(zz):
        return tf.reduce_sum(coefficients[0] * zz**2 + coefficients[1] * zz
                             + coefficients[2] * tf.sin(zz), axis=-1)

    result = pair(call("reparameterization_gradient", module.reparameterization_gradient, fn,
                       tf.constant(a["g_mu"]), tf.constant(a["g_variance"]), a["g_eps"]),
                  "reparameterization_gradient", ("grad_mu", "grad_variance"))
    if any(g is None for g in result):
        raise TaskError("reparameterization_gradient returned None: no gradient flows "
                        "through z")
    out["grad_mu"] = number(result[0], "grad_mu")
    out["grad_variance"] = number(result[1], "grad_variance")
    return out


def task_2a(module, plan, a):
    from vae_helpers.backend import tf

    vae = call("VAE(...)", module.VAE, latent_dim=int(plan["latent_dim"]),
               hidden_units=int(plan["hidden_units"]), input_dim=int(plan["input_dim"]))
    weights = call("VAE.weights", vae.weights)
    if not isinstance(weights, dict):
        raise TaskError(f"VAE.weights() must return a dict of named variables, got "
                        f"{type(weights).__name__}")
    names = plan["weight_names"]
    missing = [n for n in names if n not in weights]
    if missing:
        raise TaskError(f"VAE.weights() lacks {', '.join(missing)}")
    for name in names:
        variable, value = weights[name], a[f"w.{name}"]
        if tuple(getattr(variable, "shape", ())) != value.shape:
            raise TaskError(f"VAE.weights()[{name!r}] has shape "
                            f"{list(getattr(variable, 'shape', []))}, expected "
                            f"{list(value.shape)}")
        dtype = getattr(getattr(variable, "dtype", None), "as_numpy_dtype", np.float32)
        call(f"assigning VAE.weights()[{name!r}]", variable.assign, value.astype(dtype))
    x, z, eps = a["x"], a["z"], a["eps"]
    out = {}
    q = call("VAE.infer", vae.infer, x)
    out["q_mean"] = number(call("VAE.infer(x).mean", q.mean), "infer(x).mean()")
    out["q_variance"] = number(call("VAE.infer(x).variance", q.variance), "infer(x).variance()")
    p = call("VAE.generate", vae.generate, z)
    out["p_mean"] = number(call("VAE.generate(z).mean", p.mean), "generate(z).mean()")
    out["p_variance"] = number(call("VAE.generate(z).variance", p.variance),
                               "generate(z).variance()")
    terms = pair(call("VAE.elbo_terms", vae.elbo_terms, x, eps), "VAE.elbo_terms",
                 ("log_likelihood", "kl"))
    out["log_likelihood"] = number(terms[0], "elbo_terms' log-likelihood")
    out["kl"] = number(terms[1], "elbo_terms' KL")
    out["elbo"] = number(call("VAE.compute_elbo", vae.compute_elbo, x, eps), "compute_elbo")
    variables = [weights[n] for n in names]
    with tf.GradientTape() as tape:
        total = call("VAE.compute_elbo", lambda: tf.reduce_sum(vae.compute_elbo(x, eps)))
    grads = call("VAE.compute_elbo", tape.gradient, total, variables)
    for name, grad in zip(names, grads, strict=True):
        if grad is not None:  # a missing one is reported after the values are compared
            out[f"grad.{name}"] = number(grad, f"the gradient for {name}")
    return out


def task_4a(module, plan, a):
    out = {}
    for i in range(plan["cases"]):
        mu, b, u = float(a[f"mu.{i}"]), float(a[f"b.{i}"]), a[f"u.{i}"]
        out[f"z.{i}"] = number(call("laplace_sample", module.laplace_sample, mu, b, u),
                               "laplace_sample's z")
        result = pair(call("laplace_sample_grads", module.laplace_sample_grads, mu, b, u),
                      "laplace_sample_grads", ("dz/dmu", "dz/db"))
        out[f"dz_dmu.{i}"] = number(result[0], "dz/dmu")
        out[f"dz_db.{i}"] = number(result[1], "dz/db")
    out["kl"] = number(call("laplace_kl", module.laplace_kl, a["m1"], a["b1"], a["m2"],
                            a["b2"]), "laplace_kl's value")
    return out


TASKS = {"1a": task_1a, "1b": task_1b, "1c": task_1c, "1d": task_1d, "2a": task_2a,
         "4a": task_4a}


# ------------------------------------------------------------------------------ running
def load_module(path: Path):
    """The student module at ``path``, imported as ``vae_homework``."""
    spec = importlib.util.spec_from_file_location("vae_homework", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vae_homework"] = module
    spec.loader.exec_module(module)
    return module


def run_task(module, task: str, plan: dict, arrays: dict, out: Path) -> None:
    """Run one task and write its ``TASK.json`` (and ``TASK.npz`` when it ran)."""
    mine = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{task}.")}
    status = {"error": None, "not_written": False}
    try:
        if module is None:
            raise TaskError("the module was not imported")
        missing = [n for n in plan["functions"][task] if not hasattr(module, n)]
        if missing:
            raise TaskError(f"vae_homework has no {', '.join(missing)}")
        results = TASKS[task](module, plan[task], mine)
        np.savez(out / f"{task}.npz", **results)
    except TaskError as err:
        status = {"error": str(err), "not_written": err.not_written}
    except Exception as err:  # noqa: BLE001 - e.g. a tensor that cannot be compared
        status = {"error": _line(err), "not_written": False}
    (out / f"{task}.json").write_text(json.dumps(status))


def run_all(module, plan: dict, arrays: dict, out: Path, import_error: str | None = None):
    """Every task of ``plan`` on ``module`` (``None`` when its import failed), into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for task in plan["tasks"]:
        if import_error is not None:
            (out / f"{task}.json").write_text(json.dumps(
                {"error": f"importing vae_homework raised {import_error}",
                 "not_written": False}))
            continue
        run_task(module, task, plan, arrays, out)


def main(folder: str) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    folder = Path(folder).absolute()
    plan = json.loads((folder / "inputs.json").read_text())
    with np.load(folder / "inputs.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    sys.path[:0] = [str(folder), os.getcwd()]
    module, problem = None, None
    try:
        module = load_module(folder / "vae_homework.py")
    except BaseException as err:  # noqa: BLE001 - including SystemExit at import
        if isinstance(err, KeyboardInterrupt):
            raise
        problem = _line(err)
    run_all(module, plan, arrays, folder / "outputs", problem)


if __name__ == "__main__":
    main(sys.argv[1])
