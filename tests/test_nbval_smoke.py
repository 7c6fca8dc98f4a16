"""A changed output of a checked cell fails `make test`, in each of the five notebooks.

For every notebook, a copy ends with its first checked cell that prints ``PASS`` lines,
and the stored output of that cell has its first ``PASS`` changed to ``FAIL``. nbval
runs the five copies as ``make test`` runs the notebooks (the smoke profile's sizes,
``conftest.py``), in a pytest process of its own: it must fail exactly the five changed
cells, and pass every cell before them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from vae_helpers.course import pipeline, student

pytestmark = [pytest.mark.notebooks, pytest.mark.skipif(
    not os.environ.get("VAE_MNIST"),
    reason="VAE_MNIST is not set: the notebooks load the real MNIST")]

ROOT = Path(__file__).resolve().parent.parent


def first_pass_cell(nb) -> int:
    """The index among the code cells of the first checked cell that prints PASS."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(cells):
        if "nbval-check-output" in cell.metadata.get("tags", []) and any(
                o.get("name") == "stdout" and "PASS  " in o.text for o in cell.outputs):
            return number
    raise AssertionError("no checked cell prints PASS")


def broken_copy(name: str, folder: Path) -> tuple[int, str]:
    """Write ``folder/name.ipynb``: the notebook up to its first PASS cell, whose stored
    output says FAIL instead. Returns the cell's number and the changed line."""
    nb = nbformat.read(pipeline.notebook_dir() / f"{name}.ipynb", as_version=4)
    number = first_pass_cell(nb)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    nb.cells = nb.cells[:code[number] + 1]
    output = next(o for o in nb.cells[-1].outputs
                  if o.get("name") == "stdout" and "PASS  " in o.text)
    line = next(x for x in output.text.splitlines() if x.startswith("PASS  "))
    changed = "FAIL" + line[4:]
    output.text = output.text.replace(line, changed, 1)
    nbformat.write(nb, folder / f"{name}.ipynb")
    return number, changed


def test_a_changed_checked_output_fails_nbval_in_every_notebook(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(pipeline.notebook_dir() / student.STUDENT_MODULE, folder)  # they import it
    broken = {name: broken_copy(name, folder) for name in pipeline.STAGES}
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "--notebook-runs", str(tmp_path / "runs"), f"--junitxml={report}", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = {}  # (notebook, cell): None when it passed, else nbval's report
    for case in ET.parse(report).getroot().iter("testcase"):
        notebook = case.get("classname").removesuffix(".ipynb").rsplit(".", 1)[-1]
        failure = case.find("failure")
        outcomes[notebook, case.get("name")] = None if failure is None else failure.text
    for name, (number, changed) in broken.items():
        cells = {cell: text for (nb, cell), text in outcomes.items() if nb == name}
        assert sorted(cells) == sorted(f"Cell {i}" for i in range(number + 1)), (name, cells)
        failed = {cell: text for cell, text in cells.items() if text is not None}
        assert list(failed) == [f"Cell {number}"], (name, changed, failed)
        assert "Cell outputs differ" in failed[f"Cell {number}"], failed
        assert "mismatch 'stdout'" in failed[f"Cell {number}"], failed
