"""Tests of vae_helpers.grading.static: no pre-made VAE, found by reading, nothing executed."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vae_helpers.course import checks, pipeline, student
from vae_helpers.grading import static

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("source, found", [
    ("from vae_helpers import data, plots, set_seed\nfrom vae_helpers.course import record", []),
    ("import numpy as np\nfrom vae_helpers import model", [("vae_helpers.model", 2)]),
    ("from vae_helpers.model import VAE\nvae = VAE()", [("vae_helpers.model", 1)]),
    ("import vae_helpers.training.loop", [("vae_helpers.training.loop", 1)]),
    ("import importlib\nm = importlib.import_module('vae_helpers.runs')",
     [("vae_helpers.runs", 2)]),
    ("from importlib import import_module\nimport_module('.evaluate', package='vae_helpers')",
     [("vae_helpers.evaluate", 2)]),
    ("d = __import__('vae_helpers', fromlist=['distributions'])",
     [("vae_helpers.distributions", 1)]),
    ("import pythae\nfrom pythae.models import VAE", [("pythae", 1), ("pythae.models", 2)]),
    ("x = __import__('pl_bolts.models.autoencoders')", [("pl_bolts.models.autoencoders", 1)]),
    ("name = 'vae_helpers.model'\nimportlib.import_module(name)", []),  # not a constant
])
def test_findings_name_the_module_and_its_line(source, found):
    assert static.findings(source) == found


def test_the_kit_check_keeps_its_names_and_gains_the_dynamic_imports():
    source = ("from vae_helpers import model\nimport importlib\n"
              "importlib.import_module('vae_helpers.model')")
    assert checks.kit_violations(source) == ["vae_helpers.model"]
    assert checks.kit_violations(source, lines=True) == [("vae_helpers.model", 1),
                                                         ("vae_helpers.model", 3)]


def write_notebook(path, *cells):
    nbformat.write(new_notebook(cells=list(cells)), path)


def test_a_submission_is_read_file_by_file_and_cell_by_cell(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_notebook(work / "03_train.ipynb", new_markdown_cell("from vae_helpers import model"),
                   new_code_cell("%matplotlib inline\n!pip install pythae\nimport numpy as np"),
                   new_code_cell("x = 1\n\nfrom vae_helpers.model import VAE\nvae = VAE()"),
                   new_code_cell("%%bash\necho 'not Python'"))
    (work / "helpers.py").write_text("import importlib\n\nimportlib.import_module('scvi')\n")
    (work / "vae_homework.py").write_text("import tensorflow as tf\n")
    check = static.check(work)
    assert check.name == "static.no_premade_vae" and check.required and not check.passed
    assert check.reason == (
        "03_train.ipynb cell 3, line 3: imports vae_helpers.model, outside the student kit; "
        "helpers.py, line 3: imports scvi (scvi-tools, built on ready-made VAE modules): "
        + static.RULE)
    assert "one line implementations like `vae = VAE(...)` are not in the spirit of this " \
           "assignment" in check.reason


def test_what_cannot_be_read_fails_the_check_without_a_crash(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "broken.py").write_text("def f(:\n")
    (work / "latin.py").write_bytes(b"x = '\xe9'\n")
    (work / "corrupt.ipynb").write_text("{not json")
    write_notebook(work / "typo.ipynb", new_code_cell("print('fine')"), new_code_cell("if x\n"))
    check = static.check(work)
    assert not check.passed
    assert check.reason.startswith(
        "broken.py is not Python and cannot be checked (SyntaxError on line 1); corrupt.ipynb: "
        "not a readable notebook (")
    assert check.reason.endswith("(and 1 more): hand in Python the check can read")
    found, files = static.problems(work)
    assert files == 4
    assert found[2].startswith("latin.py cannot be read (")
    assert found[3] == "typo.ipynb cell 2 is not Python and cannot be checked (SyntaxError " \
                       "on line 1)"
    assert static.check(work, trouble="the submission has 60.0 MB, more than the 50 "
                        "allowed").reason == ("not checked: the submission has 60.0 MB, more "
                                              "than the 50 allowed")


def test_the_handouts_completed_with_the_solutions_pass(tmp_path):
    work = tmp_path / "work"
    student.write_student_versions(
        [pipeline.notebook_dir() / f"{n}.ipynb" for n in student.HOMEWORK], work)
    (work / "vae_homework.py").write_text(
        (pipeline.notebook_dir() / "vae_homework.py").read_text(encoding="utf-8"))
    check = static.check(work)
    assert check.passed, check.reason
    assert check.reason == ("no import of vae_helpers outside the student kit, nor of a VAE "
                            f"library, in {len(student.HOMEWORK) + 1} files")
