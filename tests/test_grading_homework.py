"""Grading the real homework notebooks end to end (they need the real MNIST, via VAE_MNIST).

The reference is a smoke-sized run of ``03_train`` and ``04_analysis`` (2,000
training and 500 test images, 2 epochs, IWAE with k = 16): the one nbval made in
this session when it executed both notebooks at the smoke profile (``make test``),
else one made here with the pipeline. One batch then grades, against it and with
the shipped rubric's checks and tolerances (its parameters replaced by the same
smoke settings), the student versions of the two notebooks, each beside the solution
module, completed five ways: with the reference's own solutions, with three
deliberate mistakes, and with a forged IWAE value; and a forged submission that
trains nothing and records the reference's own metrics. Each mistake must fail
exactly the checks it breaks (the three are in the notebooks, not in the module, so
the hidden tests of the module pass for all); the forged IWAE value changes nothing,
since the grader computes the metrics itself from the recorded weights, and the
forged submission fails its metrics with the values the grader recomputed.
"""

from __future__ import annotations

import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from test_grading import FIGURES

from vae_helpers.course import pipeline, student
from vae_helpers.grading import batch, rubric, sandbox

pytestmark = [pytest.mark.notebooks, pytest.mark.skipif(
    not os.environ.get("VAE_MNIST"),
    reason="VAE_MNIST is not set: these tests run the homework notebooks on the real MNIST")]

SMOKE = {"n_train": 2000, "n_test": 500, "epochs": 2, "bernoulli_epochs": 0, "iwae_k": 16,
         "fallback_epochs": 0}


def complete(version, reference, change=None):
    """The student version with every stub replaced by the reference's solution, in order
    (``student.fill_stubs``); ``change(source)`` may then alter each code cell's source."""
    solutions = [r for c in reference.cells if c.cell_type == "code"
                 for r in student.solution_regions(c.source)]
    used = 0
    for cell in version.cells:
        if cell.cell_type == "code":
            cell.source, n = student.fill_stubs(cell.source, solutions[used:])
            used += n
            cell.source = change(cell.source) if change else cell.source
    assert used == len(solutions)
    return version


def submission(folder, versions, references, changes=None, drop=None):
    """Write a completed copy of the student versions, and the solution module, into
    ``folder``."""
    folder.mkdir()
    (folder / student.STUDENT_MODULE).write_text(
        (pipeline.notebook_dir() / student.STUDENT_MODULE).read_text(encoding="utf-8"))
    for name in student.HOMEWORK:
        nb = complete(nbformat.read(versions / f"{name}.ipynb", as_version=4),
                      references[name], (changes or {}).get(name))
        if drop and name in drop:
            nb.cells = [c for c in nb.cells if drop[name] not in c.source]
        nbformat.write(nb, folder / f"{name}.ipynb")


def forged(folder, reference):
    """A submission that trains nothing: noise in every figure, the weights of an untrained
    VAE, and the reference run's own test ELBO and IWAE values (which the published
    notebooks print)."""
    from vae_helpers.grading import recorded

    claims = recorded.load(reference)
    folder.mkdir()
    (folder / student.STUDENT_MODULE).write_text(
        (pipeline.notebook_dir() / student.STUDENT_MODULE).read_text(encoding="utf-8"))
    nbformat.write(new_notebook(cells=[
        new_code_cell('run_dir = "runs/homework"', metadata={"tags": ["parameters"]}),
        new_code_cell(FIGURES + f"""
import vae_homework
record.weights(vae_homework.VAE().weights())
record.metric("test_elbo", {claims.metric("test_elbo")!r}, n_test=500)
record.metric("iwae_log_likelihood", {claims.metric("iwae_log_likelihood")!r}, k=16)
""")], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}}), folder / "03_train.ipynb")


def reference_run(tmp_path_factory, notebooks_executed, profile: str):
    """The run directory of a run of the homework's notebooks at ``profile``: the one nbval
    executed in this session at that profile, else one made here with the pipeline."""
    executed, runs, complete = notebooks_executed
    if executed == profile and set(student.HOMEWORK) <= set(complete):
        return runs / "runs" / "homework"  # what nbval executed before these tests
    out = tmp_path_factory.mktemp("reference") / "run"
    pipeline.run_pipeline(out, profile, {"bernoulli_epochs": 0}, stages=student.HOMEWORK,
                          progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, notebooks_executed):
    """The run directory of a smoke-sized run of the homework's notebooks."""
    return reference_run(tmp_path_factory, notebooks_executed, "smoke")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("homework")
    versions = root / "student"
    student.write_student_versions(
        [pipeline.notebook_dir() / f"{n}.ipynb" for n in student.HOMEWORK], versions)
    references = {n: nbformat.read(pipeline.notebook_dir() / f"{n}.ipynb", as_version=4)
                  for n in student.HOMEWORK}
    subs = root / "submissions"
    subs.mkdir()
    submission(subs / "same", versions, references)
    submission(subs / "p3", versions, references, {
        "03_train": lambda code: code.replace("VAE(latent_dim=latent_dim", "VAE(latent_dim=3")})
    submission(subs / "no_manifold", versions, references,
               drop={"04_analysis": 'record.figure("manifold_20x20"'})
    submission(subs / "elbo_off", versions, references, {  # reports the loss, -ELBO
        "03_train": lambda code: code.replace(
            "passed = checks.check_test_elbo(", "test_elbo = -test_elbo\n"
            "passed = checks.check_test_elbo(")})
    submission(subs / "claims", versions, references, {  # records a forged IWAE value
        "03_train": lambda code: code.replace(
            "record.history(history)", "record.history(history)\n"
            'record.metric("iwae_log_likelihood", 999.0, k=16)')})
    forged(subs / "forged", reference)
    parameters = "\n".join(f"{k} = {v}" for k, v in SMOKE.items())
    text = rubric.DEFAULT.read_text().split("[parameters]")[0]
    (root / "rubric.toml").write_text(f"{text}[parameters]\n{parameters}\n\n[limits]\n"
                                      "time_limit = 900\nmemory_mb = 4096\n")
    box = sandbox.detect()  # bubblewrap where it works, else explicitly none
    rows = batch.grade_batch(subs, reference, root / "grades",
                             rubric=rubric.load(root / "rubric.toml"), jobs=2,
                             sandbox=box if box.isolated else "off", log=lambda _: None)
    return {r["student"]: json.loads((root / "grades" / r["student"] / "grade.json").read_text())
            for r in rows}, root


def failed(grade):
    return {c["name"] for c in grade["checks"] if not c["passed"]}


def test_the_reference_notebooks_grade_all_pass_against_their_own_run(graded):
    grade = graded[0]["same"]
    assert failed(grade) == set() and grade["summary"]["passed"]
    names = [c["name"] for c in grade["checks"]]
    assert "static.no_premade_vae" in names  # the handouts import only the student kit
    assert [n for n in names if n.startswith("hidden.")] == [
        f"hidden.{t}" for t in rubric.HIDDEN_TASKS]  # the module, on grading-time inputs
    assert grade["hidden"]["status"] == "finished" and isinstance(grade["hidden"]["seed"], int)
    seeds = {g["hidden"]["seed"] for g in graded[0].values()}
    assert len(seeds) == len(graded[0])  # a fresh seed for every submission
    assert [n["status"] for n in grade["notebooks"]] == ["ok", "ok"]
    assert grade["notebooks"][0]["parameters"]["epochs"] == 2
    page = (graded[1] / "grades" / "same" / "report.html").read_text()
    # five figures of each run, four drawn again from the weights, the learning curves
    assert "Learning curves" in page and page.count("data:image/png;base64,") == 2 * 5 + 4 + 1
    assert sorted(p.name for p in (graded[1] / "grades" / "same" / "regenerated").iterdir()) \
        == ["latent_scatter.png", "manifold_20x20.png", "reconstructions_10x10.png",
            "samples_10x10.png"]
    reasons = {c["name"]: c["reason"] for c in grade["checks"]}
    assert reasons["reported.test_elbo"].startswith("reported ")


def test_every_check_of_the_solution_grade_has_points(graded):
    """The shipped rubric's points cover every check a real grade produces: a counting
    check without points would be left out of the score (and listed as unscored)."""
    grade = graded[0]["same"]
    shipped = rubric.load()
    assert grade["summary"]["unscored"] == []
    for check in grade["checks"]:
        worth = shipped.max_points(check["name"], check["required"])
        assert worth is not None, f"the shipped rubric gives {check['name']} no points"
        assert check["max_points"] == worth and (worth > 0) == check["required"]
    summary = grade["summary"]
    assert summary["score"] == summary["max_score"] == sum(
        c["max_points"] for c in grade["checks"])
    assert summary["manual"] == [dict(m) for m in shipped.manual]


def test_a_latent_space_of_three_dimensions(graded):
    grade = graded[0]["p3"]
    # the weights say P = 3, and 04_analysis cannot draw the scatter or the manifold of
    # 3-D codes; after 2 epochs the metrics may or may not differ by more than 3 nats
    broken = {"spec.latent_dim", "execution", "record.latent_scatter",
              "record.manifold_20x20", "grid.manifold_20x20"}
    assert broken <= failed(grade)
    assert failed(grade) - broken <= {"metric.test_elbo", "metric.iwae_log_likelihood"}
    reasons = {c["name"]: c["reason"] for c in grade["checks"]}
    assert reasons["spec.latent_dim"] == "latent_dim = 3; the homework asks for 2"
    assert "plot_latent_scatter needs 2-D codes [N, 2], got shape (10000, 3)" in \
        reasons["execution"]


def test_a_missing_manifold(graded):
    grade = graded[0]["no_manifold"]
    assert failed(grade) == {"record.manifold_20x20", "grid.manifold_20x20"}
    causes = {c["name"]: c["caused_by"] for c in grade["checks"] if not c["passed"]}
    assert causes == {"record.manifold_20x20": None,
                      "grid.manifold_20x20": "record.manifold_20x20"}
    assert grade["summary"]["max_score"] - grade["summary"]["score"] == sum(
        c["max_points"] for c in grade["checks"] if not c["passed"])


def test_a_reported_elbo_that_its_weights_do_not_give(graded):
    grade = graded[0]["elbo_off"]  # recorded -ELBO: the grader's own value is still right
    assert failed(grade) == {"reported.test_elbo"}
    reason = next(c["reason"] for c in grade["checks"] if c["name"] == "reported.test_elbo")
    assert "recomputed" in reason and reason.endswith("the sign is flipped (record the "
                                                      "ELBO, not the loss −ELBO)")


def test_a_forged_submission_fails_its_metrics_with_the_recomputed_values(graded):
    grade = graded[0]["forged"]
    reasons = {c["name"]: c["reason"] for c in grade["checks"] if not c["passed"]}
    assert {"metric.test_elbo", "metric.iwae_log_likelihood", "reported.test_elbo"} <= \
        reasons.keys()
    for name in ("metric.test_elbo", "metric.iwae_log_likelihood"):
        assert "(recomputed by the grader from the recorded weights)" in reasons[name]
        assert "beyond" in reasons[name]
    assert "the recorded value is not what these weights give" in reasons["reported.test_elbo"]


def test_the_iwae_bound_is_the_graders_own_from_the_weights(graded):
    for who in ("same", "claims"):  # "claims" recorded 999.0 as its IWAE value
        grade = graded[0][who]
        assert failed(grade) == set(), who
        reason = next(c["reason"] for c in grade["checks"]
                      if c["name"] == "metric.iwae_log_likelihood")
        assert "(recomputed by the grader from the recorded weights)" in reason
        assert not reason.startswith("999.00")
