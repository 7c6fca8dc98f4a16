"""Checks of the committed course notebooks: conventions, clean metadata, reference outputs.

nbval (``make test``, at the smoke profile's sizes; ``make test-full``, at the committed
parameters) re-executes them and compares the outputs of the cells tagged
``nbval-check-output``; these tests check what nbval does not: the structure every
notebook follows, that what is committed is a clean record of the reference run, and
that every notebook has checked cells whose verdicts hold at any size.
"""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

import nbformat
import pytest

from vae_helpers.course import notebook, pipeline

pytestmark = pytest.mark.unit

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = list(pipeline.STAGES)
BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/"
                   r"colab-badge\.svg\)\]\((?P<url>[^)]+)\)")


def load(name):
    return nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_notebook_folder_holds_exactly_the_pipeline_stages():
    found = sorted(p.stem for p in FOLDER.glob("*.ipynb"))
    assert found == sorted(NAMES)
    assert [int(name[:2]) for name in NAMES] == list(range(1, len(NAMES) + 1))


@pytest.mark.parametrize("name", NAMES)
def test_opens_with_title_paragraph_and_a_badge_for_its_own_path(name):
    first = load(name).cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# ")
    badges = BADGE.findall(first.source)
    assert badges == [notebook.colab_url(f"{name}.ipynb")]
    prose = BADGE.sub("", first.source.split("\n", 1)[1]).strip()
    assert len(prose.split()) >= 30 and "\n\n" not in prose  # one real paragraph


@pytest.mark.parametrize("name", NAMES)
def test_install_setup_and_parameters_cells_come_first(name):
    install, setup, params, derived = code_cells(load(name))[:4]
    assert 'if "google.colab" in sys.modules:' in install.source
    assert "pip" in install.source and f'"{notebook.install_spec()}"' in install.source
    assert re.search(r"^from vae_helpers import .*\bset_seed\b", setup.source, re.M)
    assert re.search(r"^set_seed\(\d+\)$", setup.source, re.M)
    assert "notebook.check_versions()" in setup.source
    assert params.metadata.get("tags") == ["parameters"]
    assert "parameters" not in derived.metadata.get("tags", [])


@pytest.mark.parametrize("name", NAMES)
def test_exactly_one_parameters_cell_of_plain_literals_with_a_run_dir(name):
    values = pipeline.declared_parameters(FOLDER / f"{name}.ipynb")
    assert values["run_dir"] == "runs/homework"
    cells = [c for c in load(name).cells if "parameters" in c.metadata.get("tags", [])]
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node.value, ast.Constant | ast.List | ast.UnaryOp), ast.dump(node)


@pytest.mark.parametrize("name", NAMES)
def test_all_model_code_comes_from_the_package(name):
    sources = "\n".join(c.source for c in code_cells(load(name)))
    assert re.search(r"^from vae_helpers import ", sources, re.M)
    assert not re.search(r"^\s*class\s", sources, re.M)  # no model defined in a notebook
    assert "keras" not in sources
    assert "sys.path" not in sources and "import *" not in sources


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_clean(name):
    nb = load(name)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    assert nb.metadata["kernelspec"]["name"] == pipeline.KERNEL
    for cell in nb.cells:
        assert set(cell.metadata) <= {"tags"}, cell.metadata
        assert "injected-parameters" not in cell.metadata.get("tags", [])


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_the_reference_run_without_machine_details(name):
    nb = load(name)
    cells = code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert None not in counts and counts == sorted(counts), "every cell executed, in order"
    for cell in cells:
        for output in cell.outputs:
            assert output.output_type != "error", f"{name} was committed with an error"
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
    outputs_text = "\n".join(  # what a reader sees: streams and text, not image data
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        + str(o.get("data", {}).get("text/html", "")) for c in cells for o in c.outputs)
    for pattern in (r"/work/", r"/home/", r"/root/", r"/Users/", r"/tmp/", r"[A-Z]:\\\\",
                    r"site-packages"):
        assert not re.search(pattern, outputs_text), f"{name}: machine path {pattern}"
    assert not re.search(rf"\b{re.escape(socket.gethostname())}\b", outputs_text)


@pytest.mark.parametrize("name", NAMES)
def test_checked_cells_exist_and_print_no_stderr(name):
    checked = [c for c in code_cells(load(name))
               if "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked, f"{name} has no cell whose output nbval compares"
    for cell in checked:
        assert cell.outputs, "a checked cell must print something"
        for output in cell.outputs:
            assert not (output.output_type == "stream" and output.name == "stderr"), cell.source


@pytest.mark.parametrize("name", [n for n in NAMES if n != "01_math"])
def test_figures_are_shown_and_saved(name):
    sources = "\n".join(c.source for c in code_cells(load(name)))
    images = [o for c in code_cells(load(name)) for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images and "plots.save_figure(" in sources


@pytest.mark.parametrize("name", NAMES)
def test_checked_verdicts_that_hold_at_any_size(name):
    """Checked cells print PASS lines outside the reference-run comparison (compared at the
    smoke profile's sizes too), no FAIL is committed, and reference-run cells are checked."""
    cells = code_cells(load(name))
    def stdout(cell):
        return "".join(o.text for o in cell.outputs if o.get("name") == "stdout")
    checked = [c for c in cells if "nbval-check-output" in c.metadata.get("tags", [])]
    anywhere = [c for c in checked if "reference-run" not in c.metadata["tags"]]
    assert sum(stdout(c).count("\nPASS  ") + stdout(c).startswith("PASS  ")
               for c in anywhere) >= 3, f"{name}: too few PASS lines compared at every size"
    assert not any(re.search(r"^FAIL ", stdout(c), re.M) for c in cells), name
    for cell in cells:
        if "reference-run" in cell.metadata.get("tags", []):
            assert "nbval-check-output" in cell.metadata["tags"], cell.source
