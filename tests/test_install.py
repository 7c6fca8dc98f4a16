"""The package installed, not editable, in a fresh virtual environment: what a student, a
Colab runtime or Gradescope gets.

``pip install .`` resolves the dependencies with the pinned versions as constraints,
into a new virtual environment, used from an unrelated folder: every module of the
library and the course imports, the notebooks' own imports resolve, the grader's
rubric ships with the package, and dask is absent until the ``[grading]`` extra adds
it. Installing TensorFlow into a new environment takes minutes: ``make test-full``.

The wheel, as Colab's ``pip install "vae_helpers @ git+..."`` builds it: built with
``pip wheel --no-deps`` from a copy of the sources (so that the checkout gets no
``build/``), it must hold every file of the package, the data files too (the rubric,
the Gradescope scripts). It is installed with ``--no-deps --no-index`` into a new
virtual environment whose only other packages are the ones this test runs with (a
``.pth`` file names this environment's site-packages; its ``.pth`` files, among them
the editable install of the checkout, are not read from there), so nothing is
downloaded: the wheel's build takes setuptools from pip's configured index (a local
mirror works offline). From an unrelated folder, the first cells of ``01_math`` run
on it (the Colab install cell, which does nothing there, the imports,
``check_versions``, ``checks.check_kit`` and a task's check), and so does a handout's
opening with its Google Drive cell.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib, json, pkgutil, sys
import vae_helpers, vae_helpers.course
found = {"missing": [], "modules": []}
for package in (vae_helpers, vae_helpers.course):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
            found["modules"].append(info.name)
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        found["missing"].append(name)
from vae_helpers.grading import rubric
found["rubric"] = rubric.DEFAULT.is_file()
found["location"] = vae_helpers.__file__
print(json.dumps(found))
"""


def notebook_imports() -> list[str]:
    """The modules the committed notebooks and the student module beside them import
    (the student module itself is a file next to the notebooks, not installed)."""
    import ast

    from vae_helpers.course.checks import notebook_python

    sources = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "notebooks").glob("*.py"))]
    sources += [notebook_python(path) for path in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    names = set()
    for code in sources:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    local = {p.stem for p in (ROOT / "notebooks").glob("*.py")}
    return sorted(n for n in names if n.split(".")[0] not in local)


def run(args, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_pip_install_gives_the_library_and_the_course_and_grading_adds_dask(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "-c", str(ROOT / "requirements.txt")]
    run([*pip, str(ROOT)], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = json.loads(run([python, "-c", PROBE, *notebook_imports(), "dask", "distributed"],
                           elsewhere).stdout)
    assert found["missing"] == ["dask", "distributed"], found["missing"]
    assert "vae_helpers.course.pipeline" in found["modules"] and found["rubric"]
    assert Path(found["location"]).is_relative_to(venv), "not the installed copy"
    run([*pip, f"{ROOT}[grading]"], tmp_path)
    found = json.loads(run([python, "-c", PROBE, "dask", "distributed",
                            "vae_helpers.grading.batch"], elsewhere).stdout)
    assert found["missing"] == []


def opening(notebook_path, count: int) -> str:
    """The Python of the first ``count`` code cells of a notebook (IPython's ``%`` lines
    left out)."""
    import nbformat

    cells = [c for c in nbformat.read(notebook_path, as_version=4).cells
             if c.cell_type == "code"][:count]
    return "\n".join(line for c in cells for line in c.source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))


def test_the_wheel_holds_the_package_data_and_runs_a_notebooks_opening(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "vae_helpers", source / "vae_helpers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)], tmp_path)
    wheel, = (tmp_path / "dist").glob("vae_helpers-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    files = {p.relative_to(source).as_posix() for p in (source / "vae_helpers").rglob("*")
             if p.is_file()}
    assert "vae_helpers/grading/rubric.toml" in files  # the reference is the source tree
    assert files <= shipped, sorted(files - shipped)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  tmp_path).stdout.strip()
    Path(purelib, "pinned-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--ignore-installed", str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "notebooks" / "vae_homework.py", elsewhere)  # the answer key's
    code = opening(ROOT / "notebooks" / "01_math.ipynb", 2) + """
import vae_helpers
from importlib import resources
from vae_helpers.grading import rubric
print("task", checks.check_minibatch_elbo(vae_homework.minibatch_elbo))
print("location", vae_helpers.__file__)
print("rubric", len(rubric.load().required) > 0)
print("scripts", all(resources.files("vae_helpers.grading.gradescope").joinpath(n).is_file()
                     for n in ("setup.sh", "run_autograder")))
"""
    out = run([python, "-c", code], elsewhere).stdout
    assert "(the tested pair)" in out, out
    assert "PASS  kit" in out and "PASS  1a" in out and "FAIL" not in out, out
    assert "task True" in out and "rubric True" in out and "scripts True" in out, out
    location = Path(out.split("location ", 1)[1].split("\n", 1)[0])
    assert location.is_relative_to(venv), f"not the installed copy: {location}"

    # a handout, written by the installed command: its install and Drive cells, its setup
    run([str(venv / "bin" / "vae-helpers"), "student", str(ROOT / "notebooks" / "01_math.ipynb"),
         str(ROOT / "notebooks" / "vae_homework.py"), "--out", "handout"], elsewhere)
    out = run([python, "-c", opening(elsewhere / "handout" / "01_math.ipynb", 3)],
              elsewhere / "handout").stdout
    assert "(the tested pair)" in out and "PASS  kit" in out and "Google Drive" not in out, out
