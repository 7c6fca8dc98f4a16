"""Hidden tests: the student module's tasks on inputs drawn at grading time.

The visible checks (``vae_helpers.course.checks``) use fixed inputs, so a module
could print or hard-code what they expect. The hidden tests use inputs nobody has
seen, drawn from a seed the grader draws (``secrets``) when it grades:

1. ``submitted(work)``, before anything of the submission runs, keeps the bytes of
   ``vae_homework.py`` as handed in (the notebooks cannot change what is tested);
2. ``run(...)``, after the notebooks, draws the seed and each task's inputs
   (``draw_inputs``), writes only the inputs (``inputs.json``, ``inputs.npz``) and the
   module into a fresh folder of the working copy, and runs
   ``vae_helpers.grading.hidden_child`` there in one child process: inside the same
   sandbox and environment as the notebooks, with the rubric's memory and disk caps
   and the ``[hidden]`` table's time limit. The child imports the module, calls each
   task's functions and class and writes the outputs as plain arrays and JSON, one
   error line per task that raised;
3. outside the sandbox the grader computes the expected outputs (``expected``) with
   independent references (TFP's distributions and automatic differentiation, closed
   forms, and the package's reference ``VAE`` holding the same weights,
   ``vae_helpers.model.from_homework_weights``), reads the child's outputs back as
   untrusted input (regular files inside the folder, size-capped, no pickles, numeric,
   finite, of the expected shapes) and compares them with tolerances suited to float32
   and float64 code (``TOLERANCES``).

Each task is one required check ``hidden.TASK`` with a one-line reason: what did not
match and by how much, the error its code raised (a stub: "not written"), or a call
the rubric forbids for that task (``forbidden_calls``: the module read with ``ast``,
the task's functions and the module's helpers they call). The seed goes into
``grade.json`` (``"hidden"``) so that the instructor can reproduce the inputs
(``draw_inputs(seed, ...)``); neither it nor the expected values enter the sandbox.
"""

from __future__ import annotations

import ast
import io as _io
import json
import secrets
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_helpers import io
from vae_helpers.course.checking import images
from vae_helpers.course.execution import Limits, first_line, run_limited
from vae_helpers.course.student import STUDENT_MODULE
from vae_helpers.grading.checks import Check
from vae_helpers.grading.recorded import read_inside
from vae_helpers.grading.rubric import HIDDEN_TASKS

MODULE = STUDENT_MODULE
MODULE_BYTES = 4 * 2**20
OUTPUT_BYTES = 32 * 2**20
"""The most one task's ``TASK.npz`` may hold (the 2a outputs are under 2 MB)."""
STATUS_BYTES = 64 * 2**10
LOG_BYTES = 256 * 2**10
FUNCTIONS = {
    "1a": ("minibatch_elbo",),
    "1b": ("gaussian_log_likelihood_grads",),
    "1c": ("gaussian_kl", "standard_normal_kl"),
    "1d": ("reparameterize", "reparameterization_gradient"),
    "2a": ("VAE",),
    "4a": ("laplace_sample", "laplace_sample_grads", "laplace_kl"),
}
"""The functions and the class of each task, as the module's docstring names them."""
TOLERANCES = {  # (relative, absolute as a fraction of the largest expected magnitude)
    "float64": (1e-7, 1e-9),   # 1d and 4a: the visible checks ask for float64 accuracy
    "mixed": (1e-5, 1e-5),     # 1a, 1b, 1c's gaussian_kl: float64 inputs, float32 code passes
    "float32": (1e-4, 1e-5),   # standard_normal_kl, 2a's distributions and ELBO terms
    "gradient": (2e-3, 2e-3),  # 2a's gradients, through float32 networks
}
WEIGHT_NAMES = ("encoder/hidden/kernel", "encoder/hidden/bias", "encoder/output/kernel",
                "encoder/output/bias", "decoder/hidden/kernel", "decoder/hidden/bias",
                "decoder/output/kernel", "decoder/output/bias", "likelihood/rho")


@dataclass(frozen=True)
class Submitted:
    """The student module as handed in: its text, or why there is none."""

    source: str | None
    problem: str | None = None


def submitted(work, trouble: str | None = None) -> Submitted:
    """Read ``vae_homework.py`` from the working copy before anything of it runs."""
    if trouble:
        return Submitted(None, f"not run: {trouble}")
    path = Path(work) / MODULE
    try:
        data = read_inside(Path(work), path, MODULE_BYTES)
        return Submitted(data.decode("utf-8"))
    except FileNotFoundError:
        return Submitted(None, f"no {MODULE} in the submission")
    except (OSError, ValueError) as err:  # too large, a link, not UTF-8
        return Submitted(None, f"{MODULE} cannot be used: {first_line(str(err))[:200]}")


# ------------------------------------------------------------------------------ inputs
def _covariance(rng, k):
    a = rng.normal(size=(k, k))
    return a @ a.T + rng.uniform(0.2, 1.0) * k * np.eye(k)


def draw_inputs(seed: int, tasks=HIDDEN_TASKS) -> tuple[dict, dict]:
    """The plan (sizes, JSON) and the input arrays (by ``TASK.name``) of ``tasks`` for
    ``seed``; the same seed gives the same inputs."""
    plan = {"tasks": list(tasks), "functions": {t: list(FUNCTIONS[t]) for t in tasks}}
    arrays = {}
    for task in tasks:  # one stream per task: a task's inputs do not depend on the others
        rng = np.random.default_rng([seed, HIDDEN_TASKS.index(task)])
        plan[task], drawn = _DRAW[task](rng)
        arrays.update({f"{task}.{name}": value for name, value in drawn.items()})
    return plan, arrays


def _draw_1a(rng):
    plan, a = {"n_total": []}, {}
    for i in range(3):
        samples, batch = int(rng.integers(1, 6)), int(rng.integers(2, 40))
        plan["n_total"].append(int(batch * rng.integers(3, 500)))
        a[f"ll.{i}"] = rng.normal(rng.uniform(-400, -20), rng.uniform(1, 30), (samples, batch))
        a[f"kl.{i}"] = rng.gamma(2.0, rng.uniform(0.5, 5.0), batch)
    return plan, a


def _draw_1b(rng):
    a = {}
    for i in range(2):
        batch, dim = int(rng.integers(2, 9)), int(rng.integers(20, 800))
        a[f"x.{i}"] = rng.uniform(size=(batch, dim))
        a[f"mean.{i}"] = rng.uniform(0.02, 0.98, size=(batch, dim))
        a[f"variance.{i}"] = np.float64(rng.uniform(0.01, 0.5))
    return {"cases": 2}, a


def _draw_1c(rng):
    a = {}
    for i in range(5):
        k = int(rng.integers(2, 7))
        a[f"mu0.{i}"], a[f"mu1.{i}"] = rng.normal(size=k), rng.normal(0.0, 2.0, size=k)
        a[f"cov0.{i}"], a[f"cov1.{i}"] = _covariance(rng, k), _covariance(rng, k)
    rows, p = int(rng.integers(10, 40)), int(rng.integers(2, 6))
    a["mu"] = rng.normal(0.0, 1.5, size=(rows, p)).astype(np.float32)
    a["variance"] = rng.uniform(0.05, 3.0, size=(rows, p)).astype(np.float32)
    return {"pairs": 5}, a


def _draw_1d(rng):
    samples, rows, p = int(rng.integers(2, 6)), int(rng.integers(2, 8)), int(rng.integers(2, 5))
    a = {"mu": rng.normal(size=(rows, p)), "variance": rng.uniform(0.1, 3.0, (rows, p)),
         "eps": rng.normal(size=(samples, rows, p)), "weights": rng.normal(size=(samples, rows, p))}
    g = int(rng.integers(2, 5))
    a.update(fn_a=rng.uniform(-2, 2, g), fn_b=rng.uniform(-2, 2, g), fn_c=rng.uniform(-2, 2, g),
             g_mu=rng.normal(size=g), g_variance=rng.uniform(0.1, 3.0, g),
             g_eps=rng.normal(size=(int(rng.integers(50, 400)), g)))
    return {}, a


def _draw_2a(rng):
    latent, hidden, dim, batch, samples = (int(rng.integers(2, 5)), int(rng.integers(8, 33)),
                                           784, int(rng.integers(4, 12)), 2)
    from vae_helpers.model import homework_weight_shapes

    a = {}
    for name, shape in homework_weight_shapes(latent, hidden, dim).items():
        fan_in = shape[0] if len(shape) == 2 else 1
        scale = {"encoder/hidden/kernel": 0.1}.get(name, 1.0 / np.sqrt(fan_in))
        if name == "likelihood/rho":
            value = rng.normal(-2.0, 0.5)
        elif name.endswith("bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:
            value = rng.normal(0.0, scale, shape)
        a[f"w.{name}"] = np.asarray(value, np.float32)
    a["x"] = images(rng, batch, dim)
    a["eps"] = rng.normal(size=(batch, latent)).astype(np.float32)
    a["z"] = rng.normal(size=(samples, batch, latent)).astype(np.float32)
    return {"latent_dim": latent, "hidden_units": hidden, "input_dim": dim,
            "weight_names": list(WEIGHT_NAMES)}, a


def _draw_4a(rng):
    a = {}
    for i in range(2):
        a[f"mu.{i}"], a[f"b.{i}"] = np.float64(rng.normal(0, 2)), np.float64(rng.uniform(0.1, 3))
        a[f"u.{i}"] = rng.uniform(0.001, 0.999, int(rng.integers(20, 200)))
    n = int(rng.integers(10, 60))
    a.update(m1=rng.normal(size=n), m2=rng.normal(size=n), b1=rng.uniform(0.1, 3.0, n),
             b2=rng.uniform(0.1, 3.0, n))
    return {"cases": 2}, a


_DRAW = {"1a": _draw_1a, "1b": _draw_1b, "1c": _draw_1c, "1d": _draw_1d, "2a": _draw_2a,
         "4a": _draw_4a}


# ------------------------------------------------------------------------------ expected
def expected(plan: dict, arrays: dict) -> dict:
    """``{task: {output name: (array, tolerance kind, what it is)}}``: the outputs a correct
    module gives on these inputs, from references independent of it."""
    return {task: _EXPECT[task](plan[task], {k.split(".", 1)[1]: v for k, v in arrays.items()
                                             if k.startswith(f"{task}.")})
            for task in plan["tasks"]}


def _expect_1a(plan, a):
    out = {}
    for i, n in enumerate(plan["n_total"]):
        ll, kl = a[f"ll.{i}"], a[f"kl.{i}"]
        # the average over the S samples of each image, scaled from |B| images to N
        value = n / kl.shape[0] * (ll.sum(axis=0) / ll.shape[0] - kl).sum()
        out[f"value.{i}"] = (np.asarray(value), "mixed", "minibatch_elbo")
    return out


def _expect_1b(plan, a):
    from vae_helpers.backend import tf, tfd

    out = {}
    for i in range(plan["cases"]):
        x, mean = a[f"x.{i}"], tf.constant(a[f"mean.{i}"])
        variance = tf.constant(a[f"variance.{i}"], tf.float64)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([mean, variance])
            log_lik = tf.reduce_sum(tfd.Normal(mean, tf.sqrt(variance)).log_prob(x), axis=-1)
        out[f"grad_mean.{i}"] = (tape.gradient(log_lik, mean).numpy(), "mixed",
                                 "gaussian_log_likelihood_grads' grad_mean")
        out[f"grad_variance.{i}"] = (tape.jacobian(log_lik, variance).numpy(), "mixed",
                                     "gaussian_log_likelihood_grads' grad_variance")
    return out


def _expect_1c(plan, a):
    from vae_helpers.backend import tf, tfd

    out = {}
    for i in range(plan["pairs"]):
        p0 = tfd.MultivariateNormalTriL(a[f"mu0.{i}"], np.linalg.cholesky(a[f"cov0.{i}"]))
        p1 = tfd.MultivariateNormalTriL(a[f"mu1.{i}"], np.linalg.cholesky(a[f"cov1.{i}"]))
        out[f"kl.{i}"] = (tfd.kl_divergence(p0, p1).numpy(), "mixed", "gaussian_kl")
    mu, variance = a["mu"].astype(np.float64), a["variance"].astype(np.float64)
    q = tfd.MultivariateNormalDiag(mu, np.sqrt(variance))
    prior = tfd.MultivariateNormalDiag(tf.zeros(mu.shape[-1], tf.float64))
    out["standard"] = (tfd.kl_divergence(q, prior).numpy(), "float32", "standard_normal_kl")
    return out


def _expect_1d(plan, a):
    from vae_helpers.backend import tf, tfd
    from vae_helpers.distributions import sample_from_noise

    mu, variance = tf.constant(a["mu"]), tf.constant(a["variance"])
    with tf.GradientTape() as tape:
        tape.watch([mu, variance])
        z = sample_from_noise(tfd.MultivariateNormalDiag(mu, tf.sqrt(variance)), a["eps"])
        total = tf.reduce_sum(a["weights"] * z)
    grad_mu, grad_variance = tape.gradient(total, [mu, variance])
    out = {"z": (z.numpy(), "float64", "reparameterize's z"),
           "z_grad_mu": (grad_mu.numpy(), "float64", "the gradient of reparameterize's z "
                                                      "with respect to mu"),
           "z_grad_variance": (grad_variance.numpy(), "float64", "the gradient of "
                               "reparameterize's z with respect to variance")}
    g_mu, g_variance = tf.constant(a["g_mu"]), tf.constant(a["g_variance"])
    with tf.GradientTape() as tape:
        tape.watch([g_mu, g_variance])
        zz = sample_from_noise(tfd.MultivariateNormalDiag(g_mu, tf.sqrt(g_variance)),
                               a["g_eps"])
        objective = tf.reduce_mean(tf.reduce_sum(
            a["fn_a"] * zz**2 + a["fn_b"] * zz + a["fn_c"] * tf.sin(zz), axis=-1))
    grads = tape.gradient(objective, [g_mu, g_variance])
    out["grad_mu"] = (grads[0].numpy(), "float64", "reparameterization_gradient's grad_mu")
    out["grad_variance"] = (grads[1].numpy(), "float64",
                            "reparameterization_gradient's grad_variance")
    return out


def _expect_2a(plan, a):
    from vae_helpers import model as reference_model
    from vae_helpers.backend import tf, tfd
    from vae_helpers.distributions import sample_from_noise

    reference = reference_model.from_homework_weights(
        {name: a[f"w.{name}"] for name in plan["weight_names"]})
    x, z, eps = a["x"], a["z"], a["eps"]
    q, p = reference.infer(x), reference.generate(z)
    variables = reference_model.homework_variables(reference)
    with tf.GradientTape() as tape:
        q_tape = reference.infer(x)
        log_lik = reference.generate(sample_from_noise(q_tape, eps)).log_prob(x)
        kl = tfd.kl_divergence(q_tape, reference.prior_distribution())
        total = tf.reduce_sum(log_lik - kl)
    grads = tape.gradient(total, [variables[n] for n in plan["weight_names"]])
    out = {"q_mean": (q.mean().numpy(), "float32", "VAE.infer(x).mean()"),
           "q_variance": (q.variance().numpy(), "float32", "VAE.infer(x).variance()"),
           "p_mean": (p.mean().numpy(), "float32", "VAE.generate(z).mean()"),
           "p_variance": (p.variance().numpy(), "float32", "VAE.generate(z).variance()"),
           "log_likelihood": (log_lik.numpy(), "float32", "VAE.elbo_terms' log-likelihood"),
           "kl": (kl.numpy(), "float32", "VAE.elbo_terms' KL"),
           "elbo": ((log_lik - kl).numpy(), "float32", "VAE.compute_elbo")}
    for name, grad in zip(plan["weight_names"], grads, strict=True):
        out[f"grad.{name}"] = (grad.numpy(), "gradient",
                               f"the gradient of VAE.compute_elbo with respect to {name}")
    return out


def _expect_4a(plan, a):
    from vae_helpers.backend import tf, tfd

    out = {}
    for i in range(plan["cases"]):
        loc, scale = tf.constant(a[f"mu.{i}"], tf.float64), tf.constant(a[f"b.{i}"], tf.float64)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([loc, scale])
            quantile = tfd.Laplace(loc, scale).quantile(a[f"u.{i}"])
        jacobian = tape.jacobian(quantile, [loc, scale])
        out[f"z.{i}"] = (quantile.numpy(), "float64", "laplace_sample")
        out[f"dz_dmu.{i}"] = (jacobian[0].numpy(), "float64", "laplace_sample_grads' dz/dmu")
        out[f"dz_db.{i}"] = (jacobian[1].numpy(), "float64", "laplace_sample_grads' dz/db")
    out["kl"] = (tfd.kl_divergence(tfd.Laplace(a["m1"], a["b1"]),
                                   tfd.Laplace(a["m2"], a["b2"])).numpy(), "float64",
                 "laplace_kl")
    return out


_EXPECT = {"1a": _expect_1a, "1b": _expect_1b, "1c": _expect_1c, "1d": _expect_1d,
           "2a": _expect_2a, "4a": _expect_4a}


# ------------------------------------------------------------------------------ comparing
def compare(want: dict, got: dict) -> str | None:
    """Why ``got`` (output name -> array) does not match ``want`` (``expected``'s entry for
    one task), or ``None`` when every output matches."""
    for name, (reference, kind, what) in want.items():
        reference = np.asarray(reference, np.float64)
        value = got.get(name)
        if value is None:
            return f"{what} was not produced (None: no gradient flows there?)" \
                if name.startswith("grad.") else f"{what} is missing from the outputs"
        if value.shape != reference.shape:
            return f"{what} has shape {list(value.shape)}, expected {list(reference.shape)}"
        if not np.all(np.isfinite(value)):
            return f"{what} holds NaN or infinite values"
        rtol, atol_fraction = TOLERANCES[kind]
        atol = atol_fraction * float(np.max(np.abs(reference), initial=0.0)) + 1e-12
        error = np.abs(value - reference)
        bad = error > atol + rtol * np.abs(reference)
        if np.any(bad):
            relative = float(np.max(error[bad] / np.maximum(np.abs(reference[bad]), atol)))
            where = f" on {int(bad.sum())} of {bad.size} values" if bad.size > 1 else ""
            return f"{what} is off by {relative:.2g} (relative){where}"
    return None


def read_outputs(folder: Path, task: str, names) -> dict | str:
    """The status and the arrays the child wrote for ``task`` in ``folder``, read as untrusted
    input: ``{"error": str | None, "not_written": bool, "arrays": {...}}``, or why they
    cannot be used (a one-line reason)."""
    try:
        raw = read_inside(folder, folder / f"{task}.json", STATUS_BYTES)
    except FileNotFoundError:
        return "no outputs"
    except (OSError, ValueError) as err:
        return f"its status file cannot be read ({first_line(str(err))[:200]})"
    try:
        status = json.loads(raw.decode("utf-8"))
        error = status["error"]
        if error is not None and not isinstance(error, str):
            raise TypeError("'error' is not a string")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        return f"its status file is not valid ({first_line(str(err))[:200]})"
    if error is not None:
        return {"error": first_line(error)[:400] or "an error without a message",
                "not_written": status.get("not_written") is True, "arrays": {}}
    try:
        data = read_inside(folder, folder / f"{task}.npz", OUTPUT_BYTES)
    except FileNotFoundError:
        return "its outputs file is missing"
    except (OSError, ValueError) as err:
        return f"its outputs cannot be read ({first_line(str(err))[:200]})"
    arrays = {}
    try:
        with zipfile.ZipFile(_io.BytesIO(data)) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
        if sum(sizes.values()) > OUTPUT_BYTES:
            return f"its outputs unpack to more than {OUTPUT_BYTES:,} bytes"
        with np.load(_io.BytesIO(data), allow_pickle=False) as archive:
            for name in names:
                if name not in archive.files:
                    continue
                value = archive[name]  # bytes when the member is not a .npy array
                if not isinstance(value, np.ndarray):
                    return f"its output {name} is not an array"
                if value.dtype.kind not in "biuf":
                    return f"its output {name} is not numeric (dtype {value.dtype})"
                arrays[name] = value.astype(np.float64)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        return f"its outputs are not an array archive ({first_line(str(err))[:200]})"
    return {"error": None, "not_written": False, "arrays": arrays}


# ------------------------------------------------------------------------------ rules
def forbidden_calls(source: str, rules: dict) -> dict:
    """``{task: reason}`` for each task whose functions (with the module's own helper
    functions they call, followed by name) call what ``rules`` (the rubric's
    ``[hidden.forbidden]``) forbids; a name imported under another name
    (``from ... import kl_divergence as kl``) counts as the original. A module that does
    not parse has no findings (importing it fails in the child)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    top = {node.name: node for node in tree.body
           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    aliases = {alias.asname: alias.name for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) for alias in node.names if alias.asname}
    tasks_functions = {name for names in FUNCTIONS.values() for name in names}
    found = {}
    for task, rule in rules.items():
        calls = set(rule["calls"])
        queue = [(top[n], n) for n in FUNCTIONS.get(task, ()) if n in top]
        seen = {n for _, n in queue}
        hits = []
        while queue:
            node, owner = queue.pop(0)
            for sub in ast.walk(node):
                if not isinstance(sub, ast.Call):
                    continue
                func = sub.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name is None:
                    continue
                if aliases.get(name, name) in calls:
                    hits.append((sub.lineno, owner, aliases.get(name, name)))
                elif (isinstance(func, ast.Name) and name in top and name not in seen
                      and name not in tasks_functions):
                    seen.add(name)
                    queue.append((top[name], name))
        if hits:
            line, owner, name = min(hits)
            more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
            found[task] = (f"{owner} calls {name} on line {line}{more}, which {task} may not "
                           f"use: {rule['why']}" if rule.get("why") else
                           f"{owner} calls {name} on line {line}{more}, which {task} may not use")
    return found


# ------------------------------------------------------------------------------ running
def run(module: Submitted, rubric, work, wrapper=(), env=None, log_file=None,
        seed: int | None = None, log=None) -> tuple[list[Check], dict]:
    """The hidden checks of the working copy ``work`` and what ``grade.json`` keeps of them.

    Args:
        module: the student module as handed in (``submitted``).
        rubric: the ``Rubric`` (``hidden``: tasks, time limit, forbidden calls;
            ``limits``: memory and disk caps; ``informational_checks``).
        work: the working copy; the inputs go into a fresh folder in it.
        wrapper: the sandbox's command prefix (``Sandbox.wrapper``), ``env`` the child's
            environment (the notebooks' own).
        log_file: where the first 256 KB of what the child prints go.
        seed: the seed of the inputs (default: a fresh one from ``secrets``), to
            reproduce a grade.
        log: called with one-line progress messages.

    Returns:
        ``(checks, record)``: one ``Check`` per task of the rubric, and ``{"seed", "tasks",
        "status", "seconds"}`` (``status``: how the child ended).
    """
    tasks = tuple(rubric.hidden["tasks"])
    if not tasks:
        return [], {}
    seed = secrets.randbits(63) if seed is None else int(seed)
    info = {"seed": seed, "tasks": list(tasks), "status": "not run", "seconds": 0.0}

    def checks_of(reasons: dict) -> list[Check]:
        return [Check(f"hidden.{t}", f"hidden.{t}" not in rubric.informational_checks,
                      reasons[t] is None, reasons[t] or _passed(t)) for t in tasks]

    if module.source is None:
        info["status"] = "no module"
        return checks_of({t: module.problem for t in tasks}), info
    (log or (lambda _: None))("running the hidden tests")
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    plan, arrays = draw_inputs(seed, tasks)
    folder = Path(tempfile.mkdtemp(prefix="hidden-", dir=work))
    io.atomic_write_text(folder / MODULE, module.source)
    io.atomic_write_text(folder / "inputs.json", json.dumps(plan))
    np.savez(folder / "inputs.npz", **arrays)
    (folder / "outputs").mkdir()
    started = time.perf_counter()
    stopped = _run_child(folder, Path(work), rubric, wrapper, env, log_file)
    info.update(status=stopped or "finished", seconds=round(time.perf_counter() - started, 1))
    reasons = verdicts(folder / "outputs", expected(plan, arrays), module.source,
                       rubric.hidden["forbidden"], stopped)
    return checks_of(reasons), info


def verdicts(outputs: Path, want: dict, source: str, forbidden: dict,
             stopped: str | None = None) -> dict:
    """``{task: None (passed) or the one-line reason it failed}`` for the tasks of ``want``
    (``expected``'s result), from what the child wrote in ``outputs``, the module's
    ``source`` and the rubric's ``forbidden`` calls; ``stopped`` says how the child
    ended when it did not exit by itself."""
    rules = forbidden_calls(source, forbidden)
    reasons = {}
    for task in want:
        if task in rules:
            reasons[task] = f"not allowed: {rules[task]}"
            continue
        found = read_outputs(Path(outputs), task, want[task])
        if found == "no outputs":
            reasons[task] = (f"no result: the hidden tests' process {stopped or 'ended'} "
                             f"before {task} finished")
        elif isinstance(found, str):
            reasons[task] = f"its outputs cannot be used: {found}"
        elif found["error"] is not None:
            reasons[task] = (f"not written: {found['error']}" if found["not_written"]
                             else f"raised on the grading-time inputs: {found['error']}")
        else:
            problem = compare(want[task], found["arrays"])
            reasons[task] = problem and f"wrong on the grading-time inputs: {problem}"
    return reasons


def _passed(task: str) -> str:
    if task == "2a":
        return ("VAE's infer, generate, elbo_terms, compute_elbo and its gradients match the "
                "reference VAE holding the same weights, on inputs drawn at grading time")
    names = FUNCTIONS[task]
    return (f"{' and '.join(names)} match{'es' if len(names) == 1 else ''} the independent "
            "references on inputs drawn at grading time")


def _run_child(folder: Path, work: Path, rubric, wrapper, env, log_file) -> str | None:
    """Run the child in ``folder``; ``None`` when it exited by itself, else how it stopped."""
    limits = rubric.limits
    outcome = run_limited(
        [*wrapper, sys.executable, "-I", "-m", "vae_helpers.grading.hidden_child", str(folder)],
        cwd=work, disk_dir=work, env=env, log=log_file,
        limits=Limits(timeout=rubric.hidden["time_limit"], memory_mb=limits["memory_mb"],
                      disk_mb=limits["disk_mb"], processes=limits["processes"],
                      log_bytes=LOG_BYTES))
    if outcome.status == "timeout":
        return f"{outcome.message} and was stopped"
    if outcome.status != "ok":
        return outcome.message
    return f"exited with code {outcome.exit_code}" if outcome.exit_code else None
