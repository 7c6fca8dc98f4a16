"""The test tiers and nbval's profiles of ``conftest.py``, on stand-in tests and notebooks.

Each case runs pytest in a process of its own on files in a temporary folder, with the
repository's ``conftest.py`` and ``pyproject.toml``, as ``make test`` runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAE_MNIST": os.environ.get("VAE_MNIST") or "/not/loaded/here"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(folder), *args, str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_test_without_exactly_one_tier_stops_collection(tmp_path):
    (tmp_path / "test_none.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "test_two.py").write_text(
        "import pytest\n\n@pytest.mark.unit\n@pytest.mark.slow\ndef test_b():\n    pass\n")
    (tmp_path / "test_one.py").write_text(
        "import pytest\npytestmark = pytest.mark.unit\n\ndef test_c():\n    pass\n")
    result = pytest_in(tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "every test names exactly one tier" in result.stderr
    assert "test_none.py::test_a (no tier)" in result.stderr
    assert "test_two.py::test_b (slow, unit)" in result.stderr
    assert "test_one.py" not in result.stderr


def test_an_unknown_marker_is_refused_and_not_slow_leaves_out_the_slow_tier(tmp_path):
    (tmp_path / "test_typo.py").write_text(
        "import pytest\n\n@pytest.mark.unti\ndef test_a():\n    pass\n")
    result = pytest_in(tmp_path)
    assert result.returncode != 0 and "'unti' not found in `markers`" in result.stdout
    (tmp_path / "test_typo.py").unlink()
    (tmp_path / "test_tiers.py").write_text(
        "import pytest\n\n@pytest.mark.unit\ndef test_fast():\n    pass\n\n"
        "@pytest.mark.slow\ndef test_full_size():\n    pass\n")
    result = pytest_in(tmp_path, "-m", "not slow")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 deselected" in result.stdout


def checked(source: str, text: str, *tags: str):
    cell = new_code_cell(source, metadata={"tags": ["nbval-check-output", *tags]},
                         execution_count=1)
    cell.outputs = [new_output("stream", name="stdout", text=text)]
    return cell


def test_nbval_runs_notebooks_at_the_smoke_profiles_sizes_unless_asked_for_full(tmp_path):
    """The smoke profile's value of ``epochs`` is injected after the parameters cell (the
    file is not changed); a reference-run cell is compared at the full profile only."""
    from vae_helpers.course import pipeline

    smoke_epochs = pipeline.PROFILES["smoke"].overrides["epochs"]
    folder = tmp_path / "notebooks"
    folder.mkdir()
    params = new_code_cell("epochs = 100\nseed = 0", metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[
        params,
        checked('print("epochs:", epochs, "seed:", seed)', f"epochs: {smoke_epochs} seed: 0\n"),
        checked('print("reference parameters:", epochs == 100)', "reference parameters: True\n",
                "reference-run"),
        checked('import os\nprint(os.environ["VAE_RUNS_ROOT"], os.environ["VAE_PROGRESS"])',
                f"{tmp_path / 'nbruns'} text\n"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}})
    nbformat.write(nb, folder / "stand_in.ipynb")
    before = (folder / "stand_in.ipynb").read_bytes()
    runs = ["--notebook-runs", str(tmp_path / "nbruns")]
    smoke = pytest_in(folder, *runs, "-m", "notebooks")
    assert smoke.returncode == 0, smoke.stdout
    assert "4 passed" in smoke.stdout
    full = pytest_in(folder, *runs, "--notebook-profile", "full")
    assert full.returncode == 1, full.stdout
    failed = [line for line in full.stdout.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and "stand_in.ipynb::Cell 1" in failed[0], full.stdout
    assert "1 failed, 3 passed" in full.stdout
    assert (folder / "stand_in.ipynb").read_bytes() == before
