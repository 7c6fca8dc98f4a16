"""``pip install .`` in a fresh virtual environment: what a student or a Colab runtime gets.

The package is built and installed (not editable) with the pinned versions as
constraints, into a new virtual environment, and used from an unrelated folder: every
module of the library and the course imports, the notebooks' own imports resolve, the
grader's rubric ships with the package, and dask is absent until the ``[grading]`` extra
adds it. Installing TensorFlow into a new environment takes minutes: ``make test-full``.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
