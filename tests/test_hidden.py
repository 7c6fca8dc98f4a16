"""Tests of vae_helpers.grading.hidden: the student module on inputs drawn at grading time.

Most run the child's task calls in this process (``hidden_child.run_all``) and judge
its outputs as the grader does (``hidden.verdicts``): the solution module passes every
task on fresh inputs, each deliberate mistake fails exactly its own task with a reason
naming the function, and a module that hard-codes what the visible checks expect fails.
The child's outputs are read as untrusted input (garbage, a huge file, NaN, a wrong
shape, a link). The child is run for real, in bubblewrap, where bubblewrap works.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vae_helpers.course import checks, pipeline, student
from vae_helpers.grading import hidden, hidden_child, rubric, sandbox

pytestmark = pytest.mark.unit

SOLUTION = (pipeline.notebook_dir() / "vae_homework.py").read_text(encoding="utf-8")
RULES = rubric.load().hidden["forbidden"]

MISTAKES = {  # task: (the solution's line, the mistaken line)
    "1a": ("per_image = tf.reduce_mean(log_likelihood, axis=0) - kl",
           "per_image = tf.reduce_mean(log_likelihood, axis=0) + kl"),
    "1b": ("grad_variance = (-pixels / (2.0 * variance)", "grad_variance = (-pixels / variance"),
    "1c": ("return float(0.5 * (trace + mahalanobis - k + logdet))",
           "return float(trace + 0.5 * (mahalanobis - k + logdet))"),
    "1d": ("objective = tf.reduce_mean(fn(reparameterize(mu, variance, eps)))",
           "objective = tf.reduce_mean(fn(mu + variance * eps))"),
    "2a": ('mean = tf.sigmoid(hidden @ v["decoder/output/kernel"] + v["decoder/output/bias"])',
           'mean = tf.sigmoid(hidden @ v["decoder/output/kernel"])'),
    "4a": ("return np.log(b2 / b1) + gap", "return np.log(b1 / b2) + gap"),
}
NAMED = {"1a": "minibatch_elbo", "1b": "gaussian_log_likelihood_grads' grad_variance",
         "1c": "gaussian_kl", "1d": "reparameterization_gradient's grad_mu",
         "2a": "VAE.generate(z).mean()", "4a": "laplace_kl"}


def module_from(source: str, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hidden.MODULE).write_text(source)
    return hidden_child.load_module(folder / hidden.MODULE)


def judged(source: str, tmp_path: Path, seed: int, tasks=rubric.HIDDEN_TASKS) -> dict:
    """The hidden verdicts of ``source`` for ``seed``, the child's calls made in this process."""
    plan, arrays = hidden.draw_inputs(seed, tasks)
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    hidden_child.run_all(module_from(source, out / "module"), plan, arrays, out / "outputs")
    return hidden.verdicts(out / "outputs", hidden.expected(plan, arrays), source, RULES)


def test_the_solution_passes_every_task_on_inputs_of_three_seeds(tmp_path):
    for seed in (1, 2**40 + 7, 987654321):
        assert judged(SOLUTION, tmp_path, seed) == dict.fromkeys(rubric.HIDDEN_TASKS), seed


def test_the_same_seed_draws_the_same_inputs_and_another_seed_others():
    plan, arrays = hidden.draw_inputs(42)
    again_plan, again = hidden.draw_inputs(42)
    assert plan == again_plan and arrays.keys() == again.keys()
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    other = hidden.draw_inputs(43)[1]
    assert not np.array_equal(arrays["1c.mu"], other["1c.mu"])
    assert plan["functions"]["1c"] == ["gaussian_kl", "standard_normal_kl"]


@pytest.mark.parametrize("task", list(MISTAKES))
def test_one_mistake_fails_exactly_its_task_naming_the_function(task, tmp_path):
    right, wrong = MISTAKES[task]
    assert SOLUTION.count(right) == 1
    reasons = judged(SOLUTION.replace(right, wrong), tmp_path, seed=2024)
    assert {t for t, r in reasons.items() if r} == {task}
    assert reasons[task].startswith(f"wrong on the grading-time inputs: {NAMED[task]} ")
    assert "(relative)" in reasons[task]


def test_stubs_not_yet_written_are_named(tmp_path):
    handout = student.strip_solutions(SOLUTION, "vae_homework.py")[0]
    reasons = judged(handout, tmp_path, seed=5)
    assert reasons["1c"].startswith("not written: gaussian_kl raises NotImplementedError")
    assert reasons["2a"].startswith("not written: VAE(...) raises NotImplementedError")
    assert all(r.startswith("not written: ") for r in reasons.values())


def test_hard_coding_what_the_visible_checks_expect_fails(tmp_path, capsys):
    # the visible 1a check averages the estimate over a partition of its fixed data, so a
    # constant equal to the full-data ELBO passes it; the visible 1c check's three rows of
    # standard_normal_kl can be copied as numbers
    rng = np.random.default_rng(101)
    ll, kl = rng.normal(-50.0, 5.0, size=(3, 24)), rng.gamma(2.0, 1.5, size=24)
    full = float(np.sum(ll.mean(axis=0) - kl))
    rng = np.random.default_rng(103)
    for _ in range(5):
        rng.normal(size=4), rng.normal(size=4)
        checks._random_covariance(rng, 4), checks._random_covariance(rng, 4)
    mu = rng.normal(size=(3, 2)).astype(np.float32)
    variance = rng.uniform(0.1, 2.0, size=(3, 2)).astype(np.float32)
    rows = 0.5 * np.sum(variance + mu**2 - 1.0 - np.log(variance), axis=-1)
    cheat = (SOLUTION
             + f"\n\ndef minibatch_elbo(log_likelihood, kl, n_total):\n    return {full!r}\n"
             + "\n\ndef standard_normal_kl(mu, variance):\n"
             + f"    print('the KL of the check: {rows.tolist()}')\n"
             + f"    return np.array({rows.tolist()!r})\n")
    module = module_from(cheat, tmp_path / "cheat")
    assert checks.check_minibatch_elbo(module.minibatch_elbo)  # the visible checks pass
    assert checks.check_gaussian_kl(module.gaussian_kl, module.standard_normal_kl)
    capsys.readouterr()
    reasons = judged(cheat, tmp_path, seed=77, tasks=("1a", "1c"))
    assert reasons["1a"].startswith("wrong on the grading-time inputs: minibatch_elbo is off")
    assert reasons["1c"].startswith("wrong on the grading-time inputs: standard_normal_kl has "
                                    "shape [3], expected [")


# ------------------------------------------------------------------------------ forbidden
def test_the_solution_calls_nothing_the_rubric_forbids():
    assert hidden.forbidden_calls(SOLUTION, RULES) == {}


def test_forbidden_calls_are_found_with_their_line_also_through_helpers_and_aliases():
    source = '''
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import kl_divergence as kl
tfd = tfp.distributions

def _kl_helper(q, p):
    return kl(q, p)

def unrelated(q, p):
    return tfd.kl_divergence(q, p)  # not called by a task: allowed

def gaussian_kl(mu0, cov0, mu1, cov1):
    return 0.0

def standard_normal_kl(mu, variance):
    q = tfd.MultivariateNormalDiag(mu, variance ** 0.5)
    return _kl_helper(q, tfd.MultivariateNormalDiag(mu * 0))

def reparameterize(mu, variance, eps):
    return tfd.Normal(mu, variance ** 0.5).sample()

def laplace_kl(mu1, b1, mu2, b2):
    p = tfd.Laplace(mu1, b1)
    return p.kl_divergence(tfd.Laplace(mu2, b2))
'''
    found = hidden.forbidden_calls(source, RULES)
    assert set(found) == {"1c", "1d", "4a"}
    assert found["1c"].startswith("_kl_helper calls kl_divergence on line 7, which 1c may not "
                                  "use: 1c writes the Gaussian KL in closed form")
    assert found["1d"].startswith("reparameterize calls sample on line 20, which 1d may not use")
    assert found["4a"].startswith("laplace_kl calls kl_divergence on line 24")
    assert hidden.forbidden_calls("def broken(:", RULES) == {}


def test_a_forbidden_call_fails_the_task_even_when_the_values_are_right(tmp_path):
    source = SOLUTION.replace(
        "    return 0.5 * tf.reduce_sum(variance + mu**2 - 1.0 - tf.math.log(variance), "
        "axis=-1)",
        "    q = tfd.MultivariateNormalDiag(mu, tf.sqrt(variance))\n"
        "    return tfd.kl_divergence(q, tfd.MultivariateNormalDiag(tf.zeros_like(mu)))")
    assert source != SOLUTION
    line = source.splitlines().index(
        "    return tfd.kl_divergence(q, tfd.MultivariateNormalDiag(tf.zeros_like(mu)))") + 1
    reasons = judged(source, tmp_path, seed=3, tasks=("1c", "2a"))
    assert reasons["2a"] is None  # the values are right
    assert reasons["1c"].startswith(f"not allowed: standard_normal_kl calls kl_divergence on "
                                    f"line {line}, which 1c may not use")


# ------------------------------------------------------------------------------ hostile outputs
def want_1a():
    plan, arrays = hidden.draw_inputs(9, ("1a",))
    return hidden.expected(plan, arrays)["1a"]


def write_outputs(folder: Path, status, arrays=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1a.json").write_text(status if isinstance(status, str) else json.dumps(status))
    if arrays is not None:
        np.savez(folder / "1a.npz", **arrays)
    return folder


@pytest.mark.parametrize("status, arrays, reason", [
    ("{not json", None, "its outputs cannot be used: its status file is not valid"),
    ([1, 2], None, "its outputs cannot be used: its status file is not valid"),
    ({"error": 5}, None, "its outputs cannot be used: its status file is not valid ('error' is "
                         "not a string)"),
    ({"error": None}, None, "its outputs cannot be used: its outputs file is missing"),
    ({"error": None}, {"value.0": np.float64("nan"), "value.1": 1.0, "value.2": 1.0},
     "wrong on the grading-time inputs: minibatch_elbo holds NaN or infinite values"),
    ({"error": None}, {"value.0": np.zeros(3), "value.1": 1.0, "value.2": 1.0},
     "wrong on the grading-time inputs: minibatch_elbo has shape [3], expected []"),
    ({"error": None}, {"value.0": np.array("141.2"), "value.1": 1.0, "value.2": 1.0},
     "its outputs cannot be used: its output value.0 is not numeric (dtype <U5)"),
    ({"error": None}, {"value.1": 1.0}, "wrong on the grading-time inputs: minibatch_elbo is "
                                        "missing from the outputs"),
    ({"error": "ValueError: boom\nTraceback...", "not_written": False}, None,
     "raised on the grading-time inputs: ValueError: boom"),
])
def test_what_the_child_writes_is_read_as_untrusted_input(status, arrays, reason, tmp_path):
    folder = write_outputs(tmp_path / "outputs", status, arrays)
    found = hidden.verdicts(folder, {"1a": want_1a()}, "", {})
    assert found["1a"].startswith(reason), found["1a"]


def test_huge_linked_and_bomb_outputs_are_refused_unread(tmp_path):
    folder = write_outputs(tmp_path / "outputs", {"error": None})
    with open(folder / "1a.npz", "wb") as f:  # sparse: large, without using the disk
        f.truncate(hidden.OUTPUT_BYTES + 1)
    reasons = hidden.verdicts(folder, {"1a": want_1a()}, "", {})
    assert reasons["1a"] == ("its outputs cannot be used: its outputs cannot be read (1a.npz "
                             "has 33,554,433 bytes, more than the 33,554,432 allowed)")
    (folder / "1a.npz").unlink()
    np.savez_compressed(folder / "1a.npz", **{"value.0": np.zeros(5 * 2**20)})
    assert (folder / "1a.npz").stat().st_size < 2**20
    reasons = hidden.verdicts(folder, {"1a": want_1a()}, "", {})
    assert reasons["1a"] == ("its outputs cannot be used: its outputs unpack to more than "
                             "33,554,432 bytes")
    (folder / "1a.npz").unlink()
    (folder / "1a.npz").symlink_to("/etc/passwd")
    reasons = hidden.verdicts(folder, {"1a": want_1a()}, "", {})
    assert "1a.npz is a symbolic link" in reasons["1a"]
    (folder / "1a.npz").unlink()
    with zipfile.ZipFile(folder / "1a.npz", "w") as archive:
        archive.writestr("value.0.npy", b"not an array")
    reasons = hidden.verdicts(folder, {"1a": want_1a()}, "", {})
    assert reasons["1a"] == "its outputs cannot be used: its output value.0 is not an array"
    (folder / "1a.npz").write_bytes(b"PK\x03\x04 and then nothing")
    reasons = hidden.verdicts(folder, {"1a": want_1a()}, "", {})
    assert reasons["1a"].startswith("its outputs cannot be used: its outputs are not an array "
                                    "archive")


# ------------------------------------------------------------------------------ for real
@pytest.fixture(scope="module")
def box():
    try:
        return sandbox.probe("require")
    except sandbox.SandboxError as err:
        pytest.skip(f"the hidden tests' child runs in bubblewrap, which does not work here: "
                    f"{err}")


def run_for_real(box, tmp_path, source, time_limit=600):
    work = tmp_path / "work"
    work.mkdir()
    if source is not None:
        (work / hidden.MODULE).write_text(source)
    found = rubric.load()
    limited = rubric.Rubric(**{**found.__dict__, "hidden": {**found.hidden,
                                                            "time_limit": time_limit}})
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": "/tmp", "TMPDIR": "/tmp"}
    module = hidden.submitted(work)
    if source is not None:  # what the notebooks do after the copy is read changes nothing
        (work / hidden.MODULE).write_text("raise SystemExit('replaced')\n")
    checks, info = hidden.run(module, limited, work, box.wrapper(work), env,
                              tmp_path / "logs" / "hidden.log")
    return {c.name: c for c in checks}, info


def test_the_solution_passes_in_the_sandbox_and_the_seed_is_recorded(box, tmp_path):
    found, info = run_for_real(box, tmp_path, SOLUTION)
    assert [c.name for c in found.values()] == [f"hidden.{t}" for t in rubric.HIDDEN_TASKS]
    assert all(c.passed and c.required for c in found.values()), found
    assert info["status"] == "finished" and isinstance(info["seed"], int)
    folder = next((tmp_path / "work").glob("hidden-*"))
    plan = json.loads((folder / "inputs.json").read_text())
    assert str(info["seed"]) not in (folder / "inputs.json").read_text()
    assert plan == hidden.draw_inputs(info["seed"])[0]  # the seed reproduces the inputs


HOSTILE = '''
import json, os, sys
import numpy as np
out = os.path.join(sys.argv[1], "outputs")
open(os.path.join(out, "1a.json"), "w").write("garbage")
json.dump({"error": None}, open(os.path.join(out, "1b.json"), "w"))
with open(os.path.join(out, "1b.npz"), "wb") as f:
    f.truncate(64 * 2**20)
json.dump({"error": None}, open(os.path.join(out, "1c.json"), "w"))
np.savez(os.path.join(out, "1c.npz"), **{f"kl.{i}": np.float64("nan") for i in range(5)})
json.dump({"error": None}, open(os.path.join(out, "1d.json"), "w"))
np.savez(os.path.join(out, "1d.npz"), z=np.zeros(3))
os.symlink("/etc/passwd", os.path.join(out, "2a.json"))
os._exit(0)
'''


def test_a_hostile_child_fails_every_task_cleanly(box, tmp_path):
    found, info = run_for_real(box, tmp_path, HOSTILE)
    reasons = {name: c.reason for name, c in found.items()}
    assert not any(c.passed for c in found.values())
    assert reasons["hidden.1a"].startswith("its outputs cannot be used: its status file is not "
                                           "valid")
    assert reasons["hidden.1b"].startswith("its outputs cannot be used: its outputs cannot be "
                                           "read (1b.npz has 67,108,864 bytes")
    assert reasons["hidden.1c"] == ("wrong on the grading-time inputs: gaussian_kl holds NaN or "
                                    "infinite values")
    assert reasons["hidden.1d"].startswith("wrong on the grading-time inputs: reparameterize's "
                                           "z has shape [3], expected [")
    assert "2a.json is a symbolic link" in reasons["hidden.2a"]
    assert reasons["hidden.4a"] == ("no result: the hidden tests' process ended before 4a "
                                    "finished")
    assert info["status"] == "finished"


def test_a_child_over_its_time_limit_is_stopped(box, tmp_path):
    found, info = run_for_real(box, tmp_path, "while True:\n    pass\n", time_limit=3)
    assert {name: c.reason for name, c in found.items()} == {
        f"hidden.{t}": "no result: the hidden tests' process did not finish within its time "
                       f"limit of 3 s and was stopped before {t} finished"
        for t in rubric.HIDDEN_TASKS}
    assert all(not c.passed for c in found.values())
    assert info["status"].startswith("did not finish within its time limit of 3 s")


def test_a_module_that_fails_to_import_fails_every_task_with_its_error(box, tmp_path):
    found, _ = run_for_real(box, tmp_path, "import sys\nsys.exit('I refuse')\n")
    assert {c.reason for c in found.values()} == {
        "raised on the grading-time inputs: importing vae_homework raised SystemExit: I refuse"}


def test_without_a_module_every_hidden_check_fails_and_nothing_runs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    found, info = hidden.run(hidden.submitted(work), rubric.load(), work)
    assert [c.reason for c in found] == ["no vae_homework.py in the submission"] * 6
    assert info["status"] == "no module" and not list(work.iterdir())
    none, record = hidden.run(hidden.submitted(work), rubric.Rubric(
        **{**rubric.load().__dict__, "hidden": {"tasks": (), "time_limit": 1.0,
                                                 "forbidden": {}}}), work)
    assert none == [] and record == {}
