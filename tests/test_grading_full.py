"""The homework's solution handed in as a submission and graded at full size (``make test-full``).

The reference is the full-size run of ``03_train`` and ``04_analysis`` that nbval made
in this session (``--notebook-profile full``), else one made here with the pipeline's
full profile. The student versions of the two notebooks, completed with the solutions
and handed in beside the solution module, are graded with the shipped rubric exactly
as it is: 100 epochs on the 60,000 training images, the test ELBO and the IWAE bound
(k = 1000) recomputed from the weights on the 10,000 test images. Every automatic
check must pass, with the measured tolerances.
"""

from __future__ import annotations

import os

import pytest
from test_grading_homework import reference_run, submission

from vae_helpers.course import pipeline, student
from vae_helpers.grading import grader, sandbox

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("VAE_MNIST"),
    reason="VAE_MNIST is not set: this test trains the homework on the real MNIST")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, notebooks_executed):
    """The run directory of a full-size run of the homework's notebooks."""
    return reference_run(tmp_path_factory, notebooks_executed, "full")


def test_the_solution_graded_at_full_size_gets_every_automatic_point(tmp_path, reference):
    import nbformat

    versions = tmp_path / "student"
    student.write_student_versions(
        [pipeline.notebook_dir() / f"{n}.ipynb" for n in student.HOMEWORK], versions)
    references = {n: nbformat.read(pipeline.notebook_dir() / f"{n}.ipynb", as_version=4)
                  for n in student.HOMEWORK}
    submission(tmp_path / "solution", versions, references)
    box = sandbox.detect()  # bubblewrap where it works, else explicitly none
    grade = grader.grade(tmp_path / "solution", reference, tmp_path / "grade",
                         sandbox=box if box.isolated else "off")
    failed = {c["name"]: c["reason"] for c in grade["checks"] if not c["passed"]}
    assert failed == {} and grade["summary"]["passed"]
    assert grade["summary"]["score"] == grade["summary"]["max_score"] == 100  # every point
    assert [n["status"] for n in grade["notebooks"]] == ["ok", "ok"]
    assert grade["notebooks"][0]["parameters"]["epochs"] == 100
    reasons = {c["name"]: c["reason"] for c in grade["checks"]}
    assert "(recomputed by the grader from the recorded weights)" in reasons["metric.test_elbo"]
