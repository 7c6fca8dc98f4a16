"""The handouts: what they import from the package, and where a fresh one stops."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from vae_helpers.course import checks, execution, student

pytestmark = pytest.mark.unit

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"


def handout(tmp_path, name: str) -> Path:
    """The student versions of ``name`` and of the student module, written into tmp_path."""
    student.write_student_versions([FOLDER / f"{name}.ipynb", FOLDER / student.STUDENT_MODULE],
                                   tmp_path)
    return tmp_path / f"{name}.ipynb"


@pytest.mark.parametrize("name", student.HANDOUTS)
def test_a_handout_imports_only_the_student_kit(name, tmp_path):
    assert checks.kit_violations(checks.notebook_python(handout(tmp_path, name))) == []
    module = (tmp_path / student.STUDENT_MODULE).read_text(encoding="utf-8")
    assert checks.kit_violations(module) == []


def test_the_kit_test_sees_the_reference_modules():
    assert checks.kit_violations(
        "import vae_helpers.model\nfrom vae_helpers import data, runs\n"
        "from vae_helpers.training import fit\nfrom vae_helpers.course import record\n"
        "from vae_helpers.evaluate import iwae_log_likelihood as iwae\n"
    ) == ["vae_helpers.model", "vae_helpers.runs", "vae_helpers.training",
          "vae_helpers.evaluate"]


FIRST_TASK = {"01_math": "1a, the minibatch ELBO estimator",
              "02_build": "2a, the variables of both networks",
              "03_train": "2a, the variables of both networks",   # its VAE, before 2b's loop
              "04_analysis": "2a, the variables of both networks",
              "05_discussion": "4a, the inverse-CDF Laplace sampler"}
NEEDS_MNIST = {"03_train", "04_analysis"}  # they load the digits before their first task


@pytest.mark.parametrize("name", student.HANDOUTS)
def test_a_fresh_handout_runs_to_its_first_task_and_stops_naming_it(name, tmp_path):
    if name in NEEDS_MNIST and not os.environ.get("VAE_MNIST"):
        pytest.skip("VAE_MNIST is not set: this handout loads MNIST before its first task")
    source = handout(tmp_path, name)
    outcome = execution.run_notebook(
        source, tmp_path / "executed.ipynb", {}, cwd=tmp_path,
        limits=execution.Limits(timeout=600),
        env={**os.environ, "VAE_PROGRESS": "off"})
    assert outcome.status == "error", outcome
    assert f"NotImplementedError: {FIRST_TASK[name]}" in outcome.message
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "PASS  kit:" in printed and "FAIL" not in printed
